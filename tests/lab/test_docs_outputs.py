"""The docs' example outputs that need a server are what the commands print: the
quickstart's daily commands (section 4), the README's `nbremote up gpubox` and its
`nbremote up cluster --slurm …` (on the real Slurm of slurmlab.py).

Each `$ nbremote …` line runs in the lab against a profile named gpubox, as the user
types it (a foreground `up` gets Ctrl-C, `^C` in the page, once it has printed its last
line; BROWSER is a program that accepts the URL). Both sides go through the one
normaliser of docs_examples.py (the server's address and home folder, ports, pids,
tokens, times, column widths); everything else must match line for line.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time

import pytest
from docs_examples import CTRL_C_HINT, REPO, SETTLE, console_blocks, normalise, run_step
from slurmlab import NODE, SlurmCluster

from netlab import ALICE, SERVER_ADDR

QUICKSTART = REPO / "docs" / "quickstart.md"
README = REPO / "README.md"
PAGE_ADDRESS = "192.168.1.112"  # the pages' gpubox
PAGE_LOGIN = "login.hpc.example.org"  # the README's cluster
PAGE_NODE = "gpu-node07"


def lab_popen(lab):
    return lambda args: lab.nbremote_popen(
        *args, env={"BROWSER": "true", "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def add_profile(lab, name: str = "gpubox") -> str:
    added = lab.nbremote("add", name, "--address", SERVER_ADDR, "--user", ALICE)
    assert added.returncode == 0, added.stderr
    return str(lab.user(ALICE).home)


def test_quickstart_daily_commands_print_what_the_page_shows(lab):
    home = add_profile(lab)
    blocks = console_blocks(QUICKSTART, "## 4. Open a notebook")
    assert [[c for c, _ in b] for b in blocks] == [
        ["nbremote up gpubox"],
        ["nbremote up gpubox --detach --no-browser", "nbremote ls gpubox", "nbremote down gpubox"],
    ]
    try:
        for steps in blocks:
            for command, shown in steps:
                printed = run_step(lab_popen(lab), command)
                got = [normalise(line, home, SERVER_ADDR) for line in printed]
                want = [normalise(line, "/home/alice", PAGE_ADDRESS) for line in shown]
                assert got == want, (
                    f"docs/quickstart.md shows other output for `{command}` than it prints "
                    "now: update the page from this run:\n" + "\n".join(printed)
                )
    finally:
        lab.nbremote("down", "gpubox")
        lab.nbremote("remove", "gpubox")


def test_readme_up_gpubox_prints_what_the_readme_shows(lab):
    home = add_profile(lab)
    [steps] = console_blocks(README, "## What it replaces")
    [(command, shown)] = steps
    assert command == "nbremote up gpubox"
    try:
        printed = run_step(lab_popen(lab), command)
        # The README stops at the line the foreground `up` waits after; what Ctrl-C prints is the quickstart's.
        until_ctrl_c = printed[: next(i for i, line in enumerate(printed) if CTRL_C_HINT in line) + 1]
        got = [normalise(line, home, SERVER_ADDR) for line in until_ctrl_c]
        want = [normalise(line, "/home/me", PAGE_ADDRESS) for line in shown]
        assert got == want, (
            f"the README shows other output for `{command}` than it prints now: update it "
            "from this run:\n" + "\n".join(printed)
        )
    finally:
        lab.nbremote("down", "gpubox")
        lab.nbremote("remove", "gpubox")


@pytest.fixture
def slurm(lab):
    cluster = SlurmCluster.start(lab)
    yield cluster
    cluster.cancel_all()  # before the lab's cleanup kills the users' processes under Slurm
    cluster.stop()


def test_readme_up_on_a_slurm_cluster_prints_what_the_readme_shows(lab, slurm):
    """The README shows a job that waits for its GPU: the lab's one GPU is taken by another job
    until the `up` says its job is pending, then freed."""
    home = add_profile(lab, "cluster")
    [steps] = console_blocks(README, "## Slurm clusters")
    [(command, shown)] = steps
    assert command == 'nbremote up cluster --slurm "--gres=gpu:1 --time=4:00:00"'
    blocker = lab.server_exec(["sbatch", "--parsable", "--gres=gpu:1", "--wrap", "sleep 600"], user=ALICE)
    assert blocker.returncode == 0, blocker.stderr
    proc = lab.nbremote_popen(
        *shlex.split(command)[1:],
        env={"BROWSER": "true", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    printed: list[str] = []
    try:
        for line in proc.stdout:
            printed.append(line.rstrip("\n"))
            if "pending (Resources)" in line:
                lab.server_exec(["scancel", blocker.stdout.strip().split(";")[0]])
            if CTRL_C_HINT in line:
                break
        time.sleep(SETTLE)
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        lab.nbremote("down", "cluster")
        lab.nbremote("remove", "cluster")
    # Before its scheduler has looked at the job, Slurm gives no reason or a passing one (Priority),
    # each a line of its own: the README shows the last pending line, the reason the job waited for.
    pending = [bool(re.search(r"Slurm job \d+ pending\b", line)) for line in printed]
    kept = [line for i, line in enumerate(printed) if not (pending[i] and i + 1 < len(printed) and pending[i + 1])]
    got = [normalise(line.replace(NODE, "NODE"), home, SERVER_ADDR) for line in kept]
    want = [normalise(line.replace(PAGE_NODE, "NODE"), "/home/me", PAGE_LOGIN) for line in shown]
    assert got == want, (
        f"the README shows other output for `{command}` than it prints now: update it "
        "from this run:\n" + "\n".join(printed)
    )
