"""The docs' example outputs against real runs: the console blocks of a page, a run
typed as a user types it, and one normaliser for what differs between runs (times,
pids, ports, tokens, host key fingerprints, the home folder, the server's address,
Slurm's job ids and time left) so that everything else
must match line for line. Used by the lab and the agent tests alike."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SETTLE = 1.0  # a user reads the URL before pressing Ctrl-C
CTRL_C_HINT = "Ctrl-C stops"  # the last line a foreground `up` prints before it waits


def console_blocks(page: Path, heading: str) -> list[list[tuple[str, list[str]]]]:
    """Each console block of the section under heading: (command, the lines shown after it) per `$ ` line."""
    text = page.read_text()
    start = text.index(heading)
    following = re.compile(r"\n#{2,} ").search(text, start + 1)  # the next heading, of any level
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", text[start : following.start() if following else None], re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def normalise(line: str, home: str, address: str | None = None) -> str:
    line = line.replace(home, "HOME")
    if address:
        line = line.replace(address, "ADDRESS")
        # the path's kind is the address's (`up` names a public login node WAN, the lab's LAN)
        line = re.sub(r"\b(?:LAN|WAN|VPN) ADDRESS\b", "KIND ADDRESS", line)
    line = re.sub(r"token=[0-9a-f]+(…)?", r"token=TOKEN\1", line)
    line = re.sub(r"SHA256:[A-Za-z0-9+/]{43}", "SHA256:FINGERPRINT", line)  # each lab run has new host keys
    line = re.sub(r"#wait=[0-9a-f]+", "#wait=WAIT", line)
    line = re.sub(r"(\d{1,3}(?:\.\d{1,3}){3}|ADDRESS|NODE|localhost|gpubox|cluster):\d+", r"\1:PORT", line)
    line = re.sub(r"\bSlurm job \d+", "Slurm job JOB", line)
    line = re.sub(r"\b\d+ (?:d|h|min|s)(?: \d+ (?:h|min|s))? left\b", "TIME left", line)
    line = re.sub(r"\b\d+ ms\b", "N ms", line)
    line = re.sub(r"\bpid \d+", "pid PID", line)
    line = re.sub(r"\d+\.\d+ s$", "T s", line)
    line = re.sub(r"\b\d+ s ago\b", "N s ago", line)
    if line.startswith("HOME "):  # a row of `ls`: its third column is the pid
        line = re.sub(r"\s+\d+\s+", " PID ", line, count=1)
    return " ".join(line.split())


def _ignores_sigint(pid: int) -> bool:
    """Whether pid ignores SIGINT, from the SigIgn mask in /proc (bit N-1 is signal N)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            mask = next(line.split()[1] for line in status if line.startswith("SigIgn:"))
    except OSError:  # already gone: what it printed tells the rest
        return False
    return bool(int(mask, 16) >> (signal.SIGINT - 1) & 1)


def run_step(popen: Callable[[list[str]], subprocess.Popen], command: str) -> list[str]:
    """What `command` prints, stdout and stderr together; popen starts `nbremote ARGS` in a session of
    its own with text pipes. A foreground `up` gets Ctrl-C (shown as `^C`) once it has printed its
    last line."""
    argv = shlex.split(command)
    assert argv[0] == "nbremote", command
    foreground = argv[1] == "up" and "--detach" not in argv
    proc = popen(argv[1:])
    lines: list[str] = []
    try:
        if foreground:
            assert not _ignores_sigint(proc.pid), (
                "the command ignores SIGINT, so Ctrl-C cannot stop it: pytest was started with SIGINT ignored "
                "(as a shell script's `&` job is) and its children inherit that; start it with "
                "`env --default-signal=INT`, as scripts/test.sh does"
            )
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if CTRL_C_HINT in line:
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
