"""The docs cannot drift from the code.

The command reference is generated (docs/cli_reference.py through cog) and must be current;
every command needs help text and an example (docs/examples.toml) that the real command tree
accepts; every error nbremote can raise needs an entry in docs/troubleshooting.md under its
exit code; the diagram must be rendered from its source; every `$ nbremote …` line the pages
show must be accepted by the command line; every link between the pages must resolve.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from nbremote.agentlink import AGENT_ERROR_EXITS
from nbremote.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REGENERATE = "cog -r -I docs docs/reference.md"


def _load_generator():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_generator()
COMMANDS = list(reference.walk())
EXAMPLES = reference.examples()


def _title(path: str) -> str:
    return f"nbremote {path}".strip()


# --- the command reference -------------------------------------------------------------


def test_reference_page_is_current():
    done = subprocess.run(
        [sys.executable, "-m", "cogapp", "--check", "-I", "docs", "docs/reference.md"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        f"docs/reference.md is out of date with the commands or docs/examples.toml: run `{REGENERATE}`\n"
        + done.stdout
        + done.stderr
    )


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=lambda p: _title(p))
def test_reference_has_an_entry(path):
    page = (DOCS / "reference.md").read_text()
    assert f"\n## {_title(path)}\n" in page, (
        f"docs/reference.md has no section for `{_title(path)}`: run `{REGENERATE}`"
    )


@pytest.mark.parametrize(
    "path,command", [(p, c) for p, c, _ in COMMANDS], ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_command_and_option_has_help(path, command):
    where = Path(inspect.getsourcefile(inspect.unwrap(command.callback))) if command.callback else REPO
    where = where.relative_to(REPO) if where.is_relative_to(REPO) else where
    assert (command.help or "").strip(), f"`{_title(path)}` has no help: give its function a docstring ({where})"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), (
                f"option {'/'.join(param.opts)} of `{_title(path)}` has no help: add help=... ({where})"
            )


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=lambda p: _title(p))
def test_every_command_has_an_example(path):
    assert EXAMPLES.get(path), (
        f'`{_title(path)}` has no example: add a ["{path}"] table to docs/examples.toml '
        f'("command line" = "what it does"), then run `{REGENERATE}`'
    )


def test_examples_are_only_for_real_commands():
    known = {p for p, _, _ in COMMANDS}
    unknown = sorted(set(EXAMPLES) - known)
    assert not unknown, f"docs/examples.toml has examples for commands that do not exist: {unknown}"


EXAMPLE_LINES = [(path, line) for path, table in EXAMPLES.items() for line in table]


@pytest.mark.parametrize("path,line", EXAMPLE_LINES, ids=[line for _, line in EXAMPLE_LINES])
def test_example_is_accepted_by_the_command(path, line, monkeypatch):
    """Each example goes through click's real parsing with every callback replaced by a recorder."""
    ran: list[str] = []

    def record(*args, **kwargs):
        ran.append(click.get_current_context().command_path)

    for _, command, _ in COMMANDS:
        if command.callback is not None:
            monkeypatch.setattr(command, "callback", record)
    words = shlex.split(line)
    if words[0] == "sudo":
        words = words[1:]
    assert words[0] == "nbremote", f"docs/examples.toml: {line!r} must start with `nbremote` (or `sudo nbremote`)"
    try:
        reference.cli.main(args=words[1:], prog_name="nbremote", standalone_mode=False)
    except click.ClickException as exc:
        pytest.fail(f"docs/examples.toml [{path!r}]: {line!r} is refused: {exc.format_message()}")
    if "--version" in words:
        return  # an eager option: it answers and stops before any command runs
    assert ran and ran[-1].startswith(_title(path)), (
        f"docs/examples.toml [{path!r}]: {line!r} runs {ran[-1] if ran else 'nothing'}, not `{_title(path)}`"
    )


# --- troubleshooting: every error under its exit code ----------------------------------

SRC = REPO / "src" / "nbremote"
TROUBLE = DOCS / "troubleshooting.md"
HOLE = object()  # a part of the message filled in at run time
# Calls that build an NbremoteError from their own `message` argument, with the exit code they give it.
WRAPPERS = {"_usage": ExitCode.USAGE}
# Raise sites whose message is not in the source; each is documented by hand.
NOT_LITERAL = {
    # main() re-raises click's usage errors as JSON for --json: click's messages, documented under exit 2.
    ("cli.py", "exc.format_message()"),
    # The client shows the agent's own errors: each AgentError(...) in agent/ is a site checked here.
    ("agentlink.py", "message"),
}
TOO_VAGUE = 6  # letters: a message with fewer of its own (like "…: …") is found through its hint too


@dataclass
class RaiseSite:
    where: str  # file:line
    parts: list  # literal strings and HOLE
    hint: list | None
    exit_codes: set[int]
    prefix: str = "✗ "  # how the CLI prints it: click's usage errors start with "Error: "

    def shown(self) -> str:
        return "".join("…" if p is HOLE else p for p in self.parts)


def _parts(node: ast.expr, agent: bool, percent: bool = False) -> list | None:
    """The message as literal pieces and holes, or None when it is not built from literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        # %-format holes; and "the server" in the agent's messages, which the client replaces by the host's name.
        holes = "|".join(([r"%[-0-9.]*[srdgf]"] if percent else []) + (["the server"] if agent else []))
        pieces: list = []
        for i, chunk in enumerate(re.split(holes, node.value) if holes else [node.value]):
            pieces += ([HOLE] if i else []) + ([chunk] if chunk else [])
        return pieces
    if isinstance(node, ast.JoinedStr):
        return [value.value if isinstance(value, ast.Constant) else HOLE for value in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _parts(node.left, agent, percent=True)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _parts(node.left, agent, percent), _parts(node.right, agent, percent)
        return None if left is None else left + (right if right is not None else [HOLE])
    return None


def _codes(node: ast.expr | None) -> set[int]:
    if node is None:
        return {int(ExitCode.ERROR)}
    return {
        int(ExitCode[n.attr])
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ExitCode"
    }


def raise_sites() -> tuple[list[RaiseSite], list[str]]:
    """Every raise site of an error the user can see, and the sites this scan cannot read."""
    sites, unreadable = [], []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(REPO)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            keywords = {k.arg: k.value for k in node.keywords}
            prefix = "✗ "
            where = f"{rel}:{node.lineno}"
            if name == "NbremoteError" or name in WRAPPERS:
                if not node.args:
                    continue
                message, agent = node.args[0], False
                codes = {int(WRAPPERS[name])} if name in WRAPPERS else _codes(keywords.get("exit_code"))
                hint = keywords.get("hint", node.args[1] if name in WRAPPERS and len(node.args) > 1 else None)
            elif name == "AgentError" and len(node.args) >= 2:
                code = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
                message, agent = node.args[1], True
                codes = {int(AGENT_ERROR_EXITS.get(code, ExitCode.AGENT_FAILED))}
                hint = keywords.get("hint", node.args[2] if len(node.args) > 2 else None)
            elif name in ("UsageError", "BadParameter") and node.args:
                message, agent, codes, hint = node.args[0], False, {int(ExitCode.USAGE)}, None
                prefix = "Error: "
            else:
                continue
            parts = _parts(message, agent)
            if parts is None:
                if (path.name, ast.unparse(message)) in NOT_LITERAL:
                    continue
                if name not in WRAPPERS and isinstance(message, ast.Name):
                    # A helper passing its own parameter on (e.g. hosts._usage): its callers are the sites.
                    enclosing = [
                        f
                        for f in ast.walk(tree)
                        if isinstance(f, (ast.FunctionDef,))
                        and f.lineno <= node.lineno <= f.end_lineno
                        and message.id in [a.arg for a in f.args.args]
                    ]
                    if enclosing and enclosing[-1].name in WRAPPERS:
                        continue
                unreadable.append(f"{where}: {ast.unparse(message)}")
                continue
            hint_parts = _parts(hint, agent) if hint is not None else None
            sites.append(RaiseSite(where, parts, hint_parts, codes, prefix))
    return sites, unreadable


def _pattern(parts: list) -> re.Pattern:
    """A hole matches any text: the docs write it as a capitalised placeholder (HOST, PORT…)."""
    return re.compile("".join(".*?" if p is HOLE else re.escape(p) for p in parts))


def _sections() -> dict[int, list[str]]:
    """Exit code -> the error lines (`✗ …`) and hint lines (`hint: …`) under its `## Exit code N` heading."""
    sections: dict[int, list[str]] = {}
    current = None
    for line in TROUBLE.read_text().splitlines():
        heading = re.match(r"## Exit code (\d+)\b", line)
        if heading:
            current = sections.setdefault(int(heading.group(1)), [])
        elif line.startswith("## "):
            current = None
        elif current is not None:
            current.append(line.strip())
    return sections


SITES, UNREADABLE = raise_sites()


def test_every_error_message_is_written_out():
    assert not UNREADABLE, (
        "these errors take their message from a variable, so docs/troubleshooting.md cannot be checked for "
        "them; write the message as a string or f-string at the raise site (or, for a helper that passes "
        "its argument on, add it to WRAPPERS in tests/unit/test_docs.py):\n" + "\n".join(UNREADABLE)
    )


def test_raise_sites_are_found():
    """The scan itself: it must see the errors this test is about, or it checks nothing."""
    shown = {s.shown() for s in SITES}
    assert "invite: no address" in shown and "no python3 on …" in shown
    assert any(s.shown().startswith("no conda environment") and int(ExitCode.NO_JUPYTER) in s.exit_codes for s in SITES)
    assert len(SITES) > 80


def test_every_exit_code_has_a_section():
    sections = _sections()
    missing = [f"{int(c)} ({c.name})" for c in ExitCode if int(c) not in sections]
    assert not missing, f"docs/troubleshooting.md has no `## Exit code N` section for {', '.join(missing)}"


@pytest.mark.parametrize("site", SITES, ids=[s.where for s in SITES])
def test_every_error_is_in_troubleshooting(site):
    sections = _sections()
    lines = [line for code in site.exit_codes for line in sections.get(code, [])]
    errors = [line[len(site.prefix) :] for line in lines if line.startswith(site.prefix)]
    hints = [line[6:] for line in lines if line.startswith("hint: ")]
    message = _pattern(site.parts)
    headings = " or ".join(f"`## Exit code {c}`" for c in sorted(site.exit_codes))
    assert any(message.fullmatch(e) for e in errors), (
        f"{site.where} raises {site.shown()!r} (exit {'/'.join(map(str, sorted(site.exit_codes)))}), "
        f"but docs/troubleshooting.md has no `{site.prefix}` line for it under {headings}: add one there, in a text block, "
        "with each … written as a placeholder such as HOST or PORT, then its cause and the fix"
    )
    own_letters = sum(ch.isalpha() for p in site.parts if p is not HOLE for ch in p)
    if own_letters < TOO_VAGUE:
        assert site.hint is not None, (
            f"{site.where}: {site.shown()!r} says too little to be documented alone: give it a hint"
        )
        hint = _pattern(site.hint)
        assert any(hint.fullmatch(h) for h in hints), (
            f"{site.where}: {site.shown()!r} is too short to find on its own: docs/troubleshooting.md needs its "
            f"hint {''.join('…' if p is HOLE else p for p in site.hint)!r} as a `hint: ` line under {headings}"
        )


# --- the diagram and the commands shown in the pages -------------------------------------


def test_diagram_is_rendered_from_its_source():
    """how-it-works.svg shows exactly the nodes, edges and label lines of how-it-works.dot."""
    source = (DOCS / "how-it-works.dot").read_text()
    source = re.sub(r"^\s*//.*$", "", source, flags=re.M)
    svg = ET.parse(DOCS / "how-it-works.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    titles = {t.text for t in svg.iter(f"{ns}title")}
    texts = {t.text for t in svg.iter(f"{ns}text")}
    nodes = set(re.findall(r"^\s*(\w+)\s*\[", source, re.M)) - {"graph", "node", "edge"}
    edges = {f"{a}->{b}" for a, b in re.findall(r"^\s*(\w+)\s*->\s*(\w+)", source, re.M)}
    labels = {line for label in re.findall(r'label="((?:[^"\\]|\\.)*)"', source) for line in label.split("\\n")}
    drawn = {t for t in titles if not t.startswith("cluster_") and t != "nbremote"}
    regenerate = "regenerate it: dot -Tsvg docs/how-it-works.dot -o docs/how-it-works.svg"
    assert drawn == nodes | edges, f"docs/how-it-works.svg is stale ({sorted(drawn ^ (nodes | edges))}): {regenerate}"
    assert labels <= texts, f"docs/how-it-works.svg lacks the labels {sorted(labels - texts)}: {regenerate}"


def _shown_commands() -> list[tuple[str, str]]:
    """Every `$ nbremote …` line in the README and docs pages: (page, command line)."""
    found = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for line in page.read_text().splitlines():
            match = re.match(r"\$ (?:sudo )?(?:\S*/)?(nbremote(?: .*)?)$", line.strip())
            if match:
                found.append((str(page.relative_to(REPO)), match.group(1)))
    return found


SHOWN = _shown_commands()


def test_pages_show_commands():
    pages = {page for page, _ in SHOWN}
    assert {"README.md", "docs/quickstart.md"} <= pages


@pytest.mark.parametrize("page,line", SHOWN, ids=[f"{p}: {c}" for p, c in SHOWN])
def test_command_shown_in_the_docs_is_accepted(page, line, monkeypatch):
    for _, command, _ in COMMANDS:
        if command.callback is not None:
            monkeypatch.setattr(command, "callback", lambda *a, **k: None)
    try:
        reference.cli.main(args=shlex.split(line)[1:], prog_name="nbremote", standalone_mode=False)
    except click.ClickException as exc:
        pytest.fail(f"{page} shows `{line}`, which nbremote refuses: {exc.format_message()}")


_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _local_links():
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in _LINK.findall(page.read_text()):
            if "://" not in target and not target.startswith("mailto:"):
                yield page, target


def test_pages_link_to_each_other():
    assert any(target.endswith("security.md") for _, target in _local_links())


@pytest.mark.parametrize("page, target", list(_local_links()), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_local_link_resolves(page, target):
    assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which does not exist"
