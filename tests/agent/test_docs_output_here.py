"""The quickstart's "On one machine" output is what the commands print.

The console block is run command by command on this machine (a private HOME, tmux
and Jupyter of the test venv), as a user types it: a foreground `up` gets Ctrl-C
(`^C` in the page) once it has printed its last line. Both sides go through the
one normaliser of docs_examples.py (times, pids, ports, tokens, the home folder);
everything else must match line for line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from docs_examples import REPO, console_blocks, normalise, run_step

from agentbox import HAVE_JUPYTER, HAVE_TMUX, VENV_BIN

QUICKSTART = REPO / "docs" / "quickstart.md"
SRC = REPO / "src"

pytestmark = pytest.mark.skipif(not (HAVE_JUPYTER and HAVE_TMUX), reason="needs jupyter-lab in the venv and tmux")


def popen_here(env: dict, cwd: Path):
    return lambda args: subprocess.Popen(
        [sys.executable, "-m", "nbremote", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def world(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        "HOME": str(home),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_RUNTIME_DIR": str(runtime),
        "TMUX_TMPDIR": str(tmp_path),
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "PYTHONPATH": str(SRC),
        "PYTHONUNBUFFERED": "1",
        "LC_ALL": "C.UTF-8",
        "COLUMNS": "200",
    }
    yield home, env
    subprocess.run(["tmux", "kill-server"], env=env, capture_output=True)


def test_on_one_machine_output_is_what_the_commands_print(world):
    home, env = world
    steps = console_blocks(QUICKSTART, "## On one machine")[0]
    assert [command for command, _ in steps] == ["nbremote up --no-browser", "nbremote down"]
    for command, shown in steps:
        printed = run_step(popen_here(env, home), command)
        assert [normalise(line, str(home)) for line in printed] == [normalise(line, "/home/me") for line in shown], (
            f"docs/quickstart.md shows other output for `{command}` than it prints now: update the page "
            f"from this run:\n" + "\n".join(printed)
        )
