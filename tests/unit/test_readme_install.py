"""The README's first command works on a fresh machine as written."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _command_1() -> list[list[str]]:
    block = re.search(r"```sh\n# 1\..*?\n(.*?)\n", README, re.S).group(1)
    return [shlex.split(step) for step in block.split("&&")]


def test_apt_lists_are_fetched_before_installing():
    # A fresh container has no package lists: apt-get install alone says "Unable to locate package".
    steps = [[w for w in step if w != "sudo"] for step in _command_1()]
    update = next(i for i, s in enumerate(steps) if s[:2] == ["apt-get", "update"])
    install = next(i for i, s in enumerate(steps) if s[:2] == ["apt-get", "install"])
    assert update < install


def test_the_python_it_needs_is_stated_as_pyproject_says():
    needed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.fullmatch(r">=(\d+\.\d+)", needed).group(1)
    assert f"Python {version} or newer" in " ".join(README.split())


def test_the_venv_of_command_1_is_put_on_path():
    venv = next(step[-1] for step in _command_1() if step[:3] == ["python3", "-m", "venv"])
    assert venv == "~/.nbremote"
    assert """echo 'export PATH="$HOME/.nbremote/bin:$PATH"' >> ~/.bashrc""" in README
