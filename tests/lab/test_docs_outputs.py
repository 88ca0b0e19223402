"""The quickstart's daily commands (section 5) print what the page shows.

Each `$ nbremote …` line of the section's console blocks runs in the lab against a
profile named gpubox, as the user types it (a foreground `up` gets Ctrl-C, `^C` in the
page, once it has printed its last line; BROWSER is a program that accepts the URL).
Both sides are normalised for what differs between runs and between the lab and the
page's names: the server's address and home folder, ports, pids, tokens, times and
column widths. Everything else must match line for line.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

from netlab import ALICE, SERVER_ADDR

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
SETTLE = 1.0  # a user reads the URL before pressing Ctrl-C


def console_blocks(heading: str) -> list[list[tuple[str, list[str]]]]:
    text = QUICKSTART.read_text()
    start = text.index(heading)
    following = re.compile(r"\n#{2,} ").search(text, start + 1)  # the next heading, of any level
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", text[start:following.start() if following else None], re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
        blocks.append(steps)
    return blocks


def normalise(line: str, home: str, address: str) -> str:
    line = line.replace(home, "/home/alice").replace(address, "192.168.1.112")
    line = re.sub(r"token=[0-9a-f]+(…)?", r"token=TOKEN\1", line)
    line = re.sub(r"(\d{1,3}(?:\.\d{1,3}){3}|localhost|gpubox):\d+", r"\1:PORT", line)
    line = re.sub(r"\(\d+ ms\)", "(N ms)", line)
    line = re.sub(r"\bpid \d+", "pid PID", line)
    line = re.sub(r"\d+\.\d+ s$", "T s", line)
    line = re.sub(r"\b\d+ s ago\b", "N s ago", line)
    if line.startswith("/home/alice "):  # a row of `ls`: its third column is the pid
        line = re.sub(r"\s+\d+\s+", " PID ", line, count=1)
    return " ".join(line.split())


def run_step(lab, command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "nbremote", command
    foreground = argv[1] == "up" and "--detach" not in argv
    proc = lab.nbremote_popen(*argv[1:], env={"BROWSER": "true", "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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


def test_quickstart_daily_commands_print_what_the_page_shows(lab):
    added = lab.nbremote("add", "gpubox", "--address", SERVER_ADDR, "--user", ALICE)
    assert added.returncode == 0, added.stderr
    home = str(lab.user(ALICE).home)
    blocks = console_blocks("## 5. Open a notebook")
    assert [[c for c, _ in b] for b in blocks] == [
        ["nbremote up gpubox"],
        ["nbremote up gpubox --detach --no-browser", "nbremote ls gpubox", "nbremote down gpubox"]]
    try:
        for steps in blocks:
            for command, shown in steps:
                printed = run_step(lab, command)
                got = [normalise(line, home, SERVER_ADDR) for line in printed]
                want = [normalise(line, "/home/alice", "192.168.1.112") for line in shown]
                assert got == want, (f"docs/quickstart.md shows other output for `{command}` than it prints "
                                     "now: update the page from this run:\n" + "\n".join(printed))
    finally:
        lab.nbremote("down", "gpubox")
        lab.nbremote("remove", "gpubox")
