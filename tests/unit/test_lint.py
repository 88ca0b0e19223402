"""ruff (lint and format) and mypy over the tree, as CI runs them: the configuration is in
pyproject.toml ([tool.ruff], [tool.mypy]; strict on the agent and the core modules)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool(module: str) -> list[str]:
    # The venv's own copy ([test] extra), run by the interpreter running the tests.
    if shutil.which(module, path=str(Path(sys.executable).parent)) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'")
    return [sys.executable, "-m", module]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    done = _run([*_tool("ruff"), "check", "--no-cache", "."])
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format():
    done = _run([*_tool("ruff"), "format", "--check", "--no-cache", "."])
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy():
    done = _run([*_tool("mypy"), "--no-incremental", "--cache-dir", "/dev/null"])
    assert done.returncode == 0, done.stdout + done.stderr
