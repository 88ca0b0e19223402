"""The docs' example outputs that need a server are what the commands print: the
quickstart's set-up (`server init` and `add --invite`, sections 2 and 3, on fresh
machines of homenet.py) and daily commands (section 4), the README's `nbremote up
gpubox`, its `nbremote up cluster --slurm …` (on the real Slurm of slurmlab.py), and
the example fragments of its `hosts`, `ls` and `status` rows.

Each `$ nbremote …` line runs in the lab against a profile named gpubox, as the user
types it (a foreground `up` gets Ctrl-C, `^C` in the page, once it has printed its last
line; BROWSER is a program that accepts the URL). Both sides go through the one
normaliser of docs_examples.py (the server's address and home folder, ports, pids,
tokens, times, column widths); everything else must match line for line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time

import pytest
from docs_examples import CTRL_C_HINT, REPO, SETTLE, console_blocks, normalise, run_step
from homenet import ECHO_URL, SERVER_LAN2, WAN_ADDR
from slurmlab import NODE, SlurmCluster
from test_onboarding import fresh  # noqa: F401 (the fixture: fresh server and laptop in a home network)

from netlab import ALICE, LAB_NET, LAB_VENV, LAPTOP_ADDR, LAPTOP_USER, SERVER_ADDR

QUICKSTART = REPO / "docs" / "quickstart.md"
README = REPO / "README.md"
PAGE_ADDRESS = "192.168.1.112"  # the pages' gpubox
PAGE_LOGIN = "login.hpc.example.org"  # the README's cluster
PAGE_NODE = "gpu-node07"
PAGE_WAN = "203.0.113.7"
PAGE_LAPTOP = "192.168.1.20"
PAGE_NET = "192.168.1.0/24"


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


def as_page(line: str, home: str) -> str:
    """A line of the lab's run with the page's names for the lab's (the quickstart names its
    network, server, user and laptop home, not the lab's). The lab's server has a second LAN, the
    home network's (homenet.py), where the page's has one: its address and network are the page's
    one LAN."""
    line = line.replace(f"add {socket.gethostname()} --invite", "add gpubox --invite")
    for lab_name, page_name in (
        (f", {SERVER_LAN2.rsplit('.', 1)[0]}.128/25", ""),
        (LAB_NET, PAGE_NET),
        (SERVER_LAN2, PAGE_ADDRESS),
        (SERVER_ADDR, PAGE_ADDRESS),
        (f"{PAGE_ADDRESS},{PAGE_ADDRESS}", PAGE_ADDRESS),
        (f"{PAGE_ADDRESS}, {PAGE_ADDRESS}", PAGE_ADDRESS),
        (WAN_ADDR, PAGE_WAN),
        (LAPTOP_ADDR, PAGE_LAPTOP),
        (ALICE, "alice"),
        (home, "/home/me"),
    ):
        line = line.replace(lab_name, page_name)
    # How sshd was reloaded is the service manager's: the page's box has systemd, the lab none.
    return re.sub(r"sshd reloaded \(.*\)$", "sshd reloaded (HOW)", line)


def differs(page: str, command: str, printed: list[str], shown: list[str], home: str) -> str | None:
    got = [normalise(as_page(line, home), "/home/me") for line in printed]
    want = [normalise(as_page(line, home), "/home/me") for line in shown]
    if got == want:
        return None
    return f"{page} shows other output for `{command}` than it prints now: update it from this run:\n" + "\n".join(
        as_page(line, home) for line in printed
    )


@contextlib.contextmanager
def ctrl_c_after(proc: subprocess.Popen, seconds: float):
    """Ctrl-C to proc should the blocking reads inside outlast seconds (a select on the pipe would
    miss the lines already in the reader's buffer)."""
    guard = threading.Timer(seconds, lambda: os.killpg(proc.pid, signal.SIGINT))
    guard.start()
    try:
        yield
    finally:
        guard.cancel()


def test_quickstart_server_init_and_add_print_what_the_page_shows(lab, fresh):  # noqa: F811
    """Sections 2 and 3 run as typed: `init` on the fresh server (with the island's echo service
    for its WAN check), then the invite it printed pasted into `add` on the home laptop. Two lines
    differ only because the lab has no one at a terminal: ssh's password prompt (sshpass answers
    it on its own terminal, so it is not in the output) and `add`'s note that the key it made has
    no passphrase, which ssh-keygen asks for on a terminal."""
    [[(init_command, init_shown)]] = console_blocks(QUICKSTART, "## 2. Set up the server")
    [[(add_command, add_shown)]] = console_blocks(QUICKSTART, "## 3. Add the server")
    assert init_command == "sudo ~/.nbremote/bin/nbremote server init --allow-user alice --yes"
    add_args = shlex.split(add_command)
    assert add_args[:4] == ["nbremote", "add", "gpubox", "--invite"] and add_args[5:] == ["--env", "~/.nbremote"]
    laptop_home = str(lab.user(LAPTOP_USER).home)
    env = lab.nbremote_env({"NBREMOTE_STATE_DIR": str(fresh.state), "PYTHONUNBUFFERED": "1"})
    init_args = [ALICE if word == "alice" else word for word in shlex.split(init_command)[2:]]
    init = lab.server_popen(
        [str(LAB_VENV / "bin" / "python"), "-m", "nbremote", *init_args, "--echo-url", ECHO_URL],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    init_printed: list[str] = []
    try:
        line = None
        with ctrl_c_after(init, 60):
            for text in init.stdout:
                init_printed.append(text.rstrip("\n"))
                found = re.search(r"--invite (\S+)", text)
                if found:
                    line = found.group(1)
                    break
        assert line, "init printed no invite:\n" + "\n".join(init_printed)
        added = lab.laptop_exec(
            ["sshpass", "-p", fresh.password, *lab.nbremote_argv("add", "gpubox", "--invite", line, *add_args[5:])],
            env=lab.nbremote_env(),
            timeout=180,
        )
        with ctrl_c_after(init, 120):
            init_printed += init.stdout.read().splitlines()  # from the reader's buffer on, as communicate() is not
        init.wait(timeout=60)
    finally:
        if init.poll() is None:
            os.killpg(init.pid, signal.SIGINT)
            init.communicate(timeout=60)
    assert added.returncode == 0 and init.returncode == 0, added.stderr + "\n".join(init_printed)
    add_printed = [line.replace(" (no passphrase: not on a terminal)", "") for line in added.stderr.splitlines()]
    add_shown = [line for line in add_shown if not line.endswith("'s password:")]
    problems = [
        differs("docs/quickstart.md", init_command, init_printed, init_shown, laptop_home),
        differs("docs/quickstart.md", add_command, add_printed, add_shown, laptop_home),
    ]
    assert problems == [None, None], "\n\n".join(p for p in problems if p)


def row_examples(command: str) -> list[str]:
    """The example outputs in the README's row for `nbremote COMMAND`: its backquoted fragments that
    name the page's server address."""
    [row] = [line for line in README.read_text().splitlines() if line.startswith(f"| `nbremote {command} ")]
    return [f for f in re.findall(r"`([^`]+)`", row) if PAGE_ADDRESS in f]


def test_readme_hosts_ls_and_status_examples_are_what_they_print(lab):
    """Each example fragment of the README's `hosts`, `ls` and `status` rows (those naming the page's
    server address; a row without one has nothing to check) is in what the command prints
    after an `up` (both normalised: the kind and address of the path, ports, round trips, ages), so
    a change of those lines in the code shows here with the run to copy from."""
    home = add_profile(lab)
    try:
        up = lab.nbremote("up", "gpubox", "--detach", "--no-browser")
        assert up.returncode == 0, up.stderr
        examples = {command: row_examples(command) for command in ("hosts", "ls", "status")}
        assert any(examples.values()), f"the README's hosts, ls and status rows show no example with {PAGE_ADDRESS}"
        for command in examples:
            done = lab.nbremote(command, *([] if command == "hosts" else ["gpubox"]))
            assert done.returncode == 0, done.stderr
            printed = (done.stdout + done.stderr).splitlines()
            got = " | ".join(normalise(line, home, SERVER_ADDR) for line in printed)
            for example in examples[command]:
                assert normalise(example, "/home/me", PAGE_ADDRESS) in got, (
                    f"the README's `{command}` row shows `{example}`, which `nbremote {command}` no longer "
                    "prints: update it from this run:\n" + "\n".join(printed)
                )
    finally:
        lab.nbremote("down", "gpubox")
        lab.nbremote("remove", "gpubox")
