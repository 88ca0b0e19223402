"""The quickstart's "On one machine" output is what the commands print.

The console block is run command by command on this machine (a private HOME, tmux
and Jupyter of the test venv), as a user types it: a foreground `up` gets Ctrl-C
(`^C` in the page) once it has printed its last line. Both sides are normalised
for what changes from run to run (times, pids, ports, tokens, the home folder);
everything else must match line for line.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentbox import HAVE_JUPYTER, HAVE_TMUX, VENV_BIN

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"
SETTLE = 1.0  # a user reads the URL before pressing Ctrl-C
SRC = REPO / "src"

pytestmark = pytest.mark.skipif(not (HAVE_JUPYTER and HAVE_TMUX), reason="needs jupyter-lab in the venv and tmux")


def console_block(page: Path, heading: str) -> list[tuple[str, list[str]]]:
    """(command, the lines shown after it) for each `$ ` line of the first console block under heading."""
    text = page.read_text()
    section = text[text.index(heading):]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def normalise(line: str, home: str) -> str:
    line = line.replace(home, "/home/me")
    line = re.sub(r"token=[0-9a-f]+(…)?", r"token=TOKEN\1", line)
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)
    line = re.sub(r"localhost:\d+", "localhost:PORT", line)
    line = re.sub(r"\bpid \d+", "pid PID", line)
    line = re.sub(r"\d+\.\d+ s$", "T s", line)
    return line.rstrip()


def run_step(command: str, env: dict, cwd: Path) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "nbremote", command
    argv = [sys.executable, "-m", "nbremote", *argv[1:]]
    foreground = argv[3] == "up" and "--detach" not in argv
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    try:
        if foreground:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if "Ctrl-C stops" in line:
                    break
            time.sleep(SETTLE)
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            lines.append("^C")
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return lines + rest.splitlines()


@pytest.fixture
def world(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {"HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_RUNTIME_DIR": str(runtime), "TMUX_TMPDIR": str(tmp_path),
           "PATH": f"{VENV_BIN}:/usr/bin:/bin", "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1",
           "LC_ALL": "C.UTF-8", "COLUMNS": "200"}
    yield home, env
    subprocess.run(["tmux", "kill-server"], env=env, capture_output=True)


def test_on_one_machine_output_is_what_the_commands_print(world):
    home, env = world
    steps = console_block(QUICKSTART, "## On one machine")
    assert [command for command, _ in steps] == ["nbremote up --no-browser", "nbremote down"]
    for command, shown in steps:
        printed = run_step(command, env, home)
        assert [normalise(line, str(home)) for line in printed] == [normalise(line, "/home/me") for line in shown], (
            f"docs/quickstart.md shows other output for `{command}` than it prints now: update the page "
            f"from this run:\n" + "\n".join(printed))
