"""The import graph: no cycles in the client, the agent or the server set-up; the laptop's
start-up imports nothing of the server set-up; nothing below the CLI imports click.

Imports are read from the source (ast), at any depth: one made inside a function, or under
`if TYPE_CHECKING`, still ties its module to the other for a reader who changes either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Cycles another branch is removing; the lead deletes each entry once that branch is merged.
ALLOWED_CYCLES: set[frozenset[str]] = set()
# The click layer: the commands and their shell completion.
CLICK_MODULES = {
    "nbremote.cli",
    "nbremote.completion",
    "nbremote.server.cli",
    "nbremote.server.invite_cmd",
    "nbremote.server.ddns_cmd",
    "nbremote.server.relay_cmd",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "nbremote").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def imports(name: str) -> set[str]:
    """Every module of MODULES and every top-level package NAME's source imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in found if n in MODULES and n != name} | {n.split(".")[0] for n in found}


def cycles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {name: {n for n in imports(name) if n in MODULES} for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    assert {"nbremote.agent.protocol", "nbremote.agent.jobs", "sys"} <= imports("nbremote.agent.main")
    assert {"nbremote.server.sshd", "nbremote.verdicts"} <= imports("nbremote.server.checks")
    assert "nbremote.servers" in imports("nbremote.profiles")


def test_no_import_cycles():
    found = [c for c in cycles() if frozenset(c) not in ALLOWED_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_every_allowed_cycle_still_exists():
    # An allowance outliving its cycle would let the cycle come back unseen.
    assert ALLOWED_CYCLES <= {frozenset(c) for c in cycles()}


def test_only_the_command_layer_imports_click():
    users = {name for name in MODULES if "click" in imports(name)}
    assert users <= CLICK_MODULES, f"below the CLI, {sorted(users - CLICK_MODULES)} import click"


def test_the_laptops_start_up_imports_nothing_of_the_server_set_up():
    code = "import sys, nbremote.cli; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    ).stdout.split()
    assert "nbremote.cli" in loaded
    assert not [m for m in loaded if m == "nbremote.server" or m.startswith("nbremote.server.")]
