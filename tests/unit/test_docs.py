"""The docs cannot drift from the code.

The command reference is generated (docs/cli_reference.py through cog) and must be current;
every command needs help text and an example (docs/examples.toml) that the real command tree
accepts; every error nbremote can raise needs an entry in docs/troubleshooting.md under its
exit code.
"""
from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

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
    done = subprocess.run([sys.executable, "-m", "cogapp", "--check", "-I", "docs", "docs/reference.md"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"docs/reference.md is out of date with the commands or docs/examples.toml: run `{REGENERATE}`\n"
        + done.stdout + done.stderr)


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=lambda p: _title(p))
def test_reference_has_an_entry(path):
    page = (DOCS / "reference.md").read_text()
    assert f"\n## {_title(path)}\n" in page, f"docs/reference.md has no section for `{_title(path)}`: run `{REGENERATE}`"


@pytest.mark.parametrize("path,command", [(p, c) for p, c, _ in COMMANDS], ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_and_option_has_help(path, command):
    where = "src/nbremote/server/cli.py" if path.startswith("server") else "src/nbremote/cli.py"
    assert (command.help or "").strip(), f"`{_title(path)}` has no help: give its function a docstring ({where})"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), (
                f"option {'/'.join(param.opts)} of `{_title(path)}` has no help: add help=... ({where})")


@pytest.mark.parametrize("path", [p for p, _, _ in COMMANDS], ids=lambda p: _title(p))
def test_every_command_has_an_example(path):
    assert EXAMPLES.get(path), (
        f"`{_title(path)}` has no example: add a [\"{path}\"] table to docs/examples.toml "
        f"(\"command line\" = \"what it does\"), then run `{REGENERATE}`")


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
        f"docs/examples.toml [{path!r}]: {line!r} runs {ran[-1] if ran else 'nothing'}, not `{_title(path)}`")
