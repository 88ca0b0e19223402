"""One meaning per exit code, said the same way everywhere, and every code used.

errors.MEANINGS is the table; the README, docs/troubleshooting.md's headings and
`nbremote --help` must say exactly it, and each code must be raised somewhere (an
error's exit_code, an agent error code mapped to it, or an explicit exit of the CLI).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from click.testing import CliRunner

from nbremote.agentlink import AGENT_ERROR_EXITS
from nbremote.cli import cli
from nbremote.errors import MEANINGS, ExitCode, exit_code_table

REPO = Path(__file__).resolve().parents[2]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_code_has_one_meaning():
    assert set(MEANINGS) == set(ExitCode)


def test_readme_lists_the_codes_as_the_table_says():
    assert _flat(exit_code_table()) in _flat((REPO / "README.md").read_text())


def test_troubleshooting_headings_are_the_table():
    headings = re.findall(r"^## Exit code (\d+): (.*)$", (REPO / "docs" / "troubleshooting.md").read_text(), re.M)
    assert [(int(c), m) for c, m in headings] == [(int(c), m) for c, m in MEANINGS.items()]


def test_help_lists_the_codes():
    shown = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    assert _flat(f"Exit codes: {exit_code_table()}.") in _flat(shown)


def test_every_documented_code_is_raised_somewhere():
    # errors.py declares them all; only uses outside the declaration count.
    declared_only = set(ExitCode) - _used_codes_outside_errors()
    assert declared_only <= {ExitCode.OK}, f"exit codes no code path ends with: {sorted(declared_only)}"


def _used_codes_outside_errors() -> set[ExitCode]:
    used = set(AGENT_ERROR_EXITS.values())
    for path in (REPO / "src" / "nbremote").rglob("*.py"):
        if path.name == "errors.py" and path.parent.name == "nbremote":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ExitCode":
                used.add(ExitCode[node.attr])
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "NbremoteError"
                and not any(k.arg == "exit_code" for k in node.keywords)
            ):
                used.add(ExitCode.ERROR)
    return used
