"""Guarantee 3: the server cannot make the laptop do anything it did not ask for.

A stand-in agent plays a compromised server: on the lab server, nbr-bob's
login PATH starts with ~/bin, where `python3` is a script that ignores the
agent it is sent and prints whatever the test wrote in ~/standin.json. The
real CLI on the laptop talks to it over real ssh (`server-bob`). Every answer
must end in a clear error (or be shown cleaned), and never in a local command,
a browser opened anywhere, or a file written outside nbremote's directories.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from netlab import BOB, LAPTOP_USER, SERVER_BOB_HOST_ALIAS

HOST = SERVER_BOB_HOST_ALIAS
HELLO = json.dumps({"nbremote_agent": 1, "hash": "0123456789ab", "python": "3.11.2"})
TOKEN = "a1" * 24
PWNED = "/tmp/nbr-security-pwned"
SHELL = f"$(touch {PWNED}) `touch {PWNED}`; touch {PWNED} && open http://evil.example/"

STANDIN = """#!/usr/bin/python3
# Called as: python3 -c BOOTSTRAP PAYLOAD REQUEST, like the real agent.
import json, os, sys
request = json.loads(sys.argv[-1])
with open(os.path.expanduser("~/standin.json")) as handle:
    plan = json.load(handle)
out = sys.stdout.buffer
for item in plan.get(request["op"], plan.get("*", [])):
    if isinstance(item, list):  # [text, times]: a flood on stdout
        for _ in range(item[1]):
            out.write(item[0].encode())
    elif isinstance(item, dict) and "stderr" in item:
        for _ in range(item["times"]):
            sys.stderr.buffer.write(item["stderr"].encode())
    elif isinstance(item, dict):
        out.flush()
        sys.exit(item["exit"])
    else:
        out.write(item.encode() + b"\\n")
out.flush()
"""


def ok(result: dict) -> str:
    return json.dumps({"id": 1, "ok": True, "result": result})


def server(**changes) -> dict:
    doc = {
        "dir": "/home/nbr-bob",
        "mode": "lab",
        "env": None,
        "port": 8888,
        "pid": 4242,
        "token": TOKEN,
        "launcher": "tmux",
        "started": 1764100000.0,
        "tmux_session": "nbremote-jupyter-x",
    }
    doc.update(changes)
    return doc


def job(**changes) -> dict:
    doc = {
        "name": "train",
        "argv": ["python", "train.py"],
        "dir": "/home/nbr-bob",
        "state": "running",
        "started": 1764100000.0,
        "runtime": 5.0,
        "launcher": "tmux",
        "tmux_session": "nbremote-job-train",
        "log": "/home/nbr-bob/.local/state/nbremote/jobs/train.log",
        "pid": 77,
    }
    doc.update(changes)
    return doc


# name: (plan, argv after `nbremote`, exit code, what stderr must say)
CASES = {
    "junk before the hello, without end": (
        {"*": [["Welcome to the server! " * 40 + "\n", 1200]]},
        ["ls", HOST],
        7,
        "printed more than 1 MiB before the agent started",
    ),
    "a hello from another agent": (
        {"*": [json.dumps({"nbremote_agent": 1, "hash": SHELL, "python": "3.11.2"})]},
        ["ls", HOST],
        7,
        "speaks another protocol",
    ),
    "an oversized line": (
        {"*": [HELLO, [" ", 5 * 1024 * 1024], ok({})]},
        ["ls", HOST],
        7,
        "sent a line longer than 4 MiB",
    ),
    "JSON nested beyond reason": ({"*": [HELLO, "[" * 200000]}, ["ls", HOST], 7, "nested too deeply"),
    "a port that is not a port": (
        {
            "up": [
                HELLO,
                json.dumps({"id": 1, "event": "starting", "data": {"port": "22; " + SHELL}}),
                ok({"reused": False, "server": server(port=70000)}),
            ]
        },
        ["up", HOST, "--detach"],
        7,
        "sent an invalid port: 70000",
    ),
    "a token with a shell in it": (
        {"up": [HELLO, ok({"reused": True, "server": server(token=TOKEN + SHELL)})]},
        ["up", HOST, "--detach"],
        7,
        "sent an invalid token",
    ),
    "a mode that would change the URL": (
        {"up": [HELLO, ok({"reused": True, "server": server(mode="lab@evil.example/")})]},
        ["up", HOST, "--detach"],
        7,
        "sent an invalid server mode",
    ),
    "a server that is not there": (
        {"up": [HELLO, ok({"reused": True, "server": server(url="http://evil.example/")})]},
        ["up", HOST, "--detach", "--timeout", "2"],
        1,
        "does not answer through localhost",
    ),
    "a directory that is a terminal escape": (
        {"ls": [HELLO, ok({"servers": [server(dir="/home/\x1b]2;owned\x07")]})]},
        ["ls", HOST],
        7,
        "sent an invalid directory",
    ),
    "a relative directory": (
        {"ls": [HELLO, ok({"servers": [server(dir="../../../.ssh")]})]},
        ["ls", HOST],
        7,
        "sent an invalid directory",
    ),
    "a stopped server that is not one": (
        {"down": [HELLO, ok({"stopped": [{"dir": SHELL, "pid": 1}]})]},
        ["down", HOST],
        7,
        "sent an invalid stopped server",
    ),
    "a job name with a shell in it": (
        {"jobs": [HELLO, ok({"jobs": [job(name="x; " + SHELL)], "pruned": [], "gpu": False})]},
        ["jobs", HOST],
        7,
        "sent an invalid job name",
    ),
    "a job with an option for a tmux session": (
        {"jobs": [HELLO, ok({"jobs": [job(tmux_session="-L evil")], "pruned": [], "gpu": False})]},
        ["attach", HOST, "train"],
        7,
        "sent an invalid job tmux session",
    ),
    "an error with escapes and a flood of details": (
        {
            "*": [
                HELLO,
                json.dumps(
                    {
                        "id": 1,
                        "ok": False,
                        "error": {
                            "code": "no_jupyter\x1b[2J",
                            "message": "\x1b]2;owned\x07\x1b[31mred " + SHELL + " " + "m" * 100000,
                            "hint": "\u202eevil\x9b31m",
                            "details": ["\x1b[2J" + "d" * 1000] * 1000,
                        },
                    }
                ),
            ]
        },
        ["ls", HOST],
        7,
        "\ufffd]2;owned\ufffd\ufffd[31mred",
    ),
    "an agent that crashes with a flood on stderr": (
        {"*": [HELLO, {"stderr": "\x1b[2J" + "e" * 1000 + "\n", "times": 20000}, {"exit": 3}]},
        ["ls", HOST],
        7,
        "stopped without answering (exit status 3)",
    ),
}


@pytest.fixture
def standin(lab, tmp_path):
    bob = lab.user(BOB)
    bindir = bob.home / "bin"
    bindir.mkdir()
    script = bindir / "python3"
    script.write_text(STANDIN)
    for path in (bindir, script):
        os.chown(path, bob.uid, bob.gid)
        os.chmod(path, 0o755)
    plan = bob.home / "standin.json"
    browser_log = tmp_path / "browser"
    browser_log.mkdir(mode=0o777)
    os.chmod(browser_log, 0o777)
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {browser_log}/opened\n')
    os.chmod(recorder, 0o755)
    os.chmod(tmp_path, 0o755)

    def use(doc: dict) -> None:
        plan.write_text(json.dumps(doc))
        os.chown(plan, bob.uid, bob.gid)

    use.browser_env = {"BROWSER": f"{recorder} %s"}
    use.opened = browser_log / "opened"
    yield use
    shutil.rmtree(bindir)
    plan.unlink(missing_ok=True)
    Path(PWNED).unlink(missing_ok=True)


def laptop_files(lab) -> dict[str, float]:
    """Every file the laptop user owns in its home and the shared temporary directories."""
    uid = lab.user(LAPTOP_USER).uid
    found = {}
    for root in (lab.user(LAPTOP_USER).home, Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")):
        for folder, dirs, files in os.walk(root):
            for name in files + dirs:
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if info.st_uid == uid:
                    found[path] = info.st_mtime
    return found


def allowed(lab) -> tuple[str, ...]:
    """nbremote's own directories, and ssh's known_hosts: OpenSSH itself records the server's
    other host keys there (UpdateHostKeys), for a host the user's own ssh_config names."""
    home = lab.user(LAPTOP_USER).home
    return (
        f"{home}/.local/state/nbremote",
        f"{home}/.config/nbremote",
        f"/tmp/nbremote-{lab.user(LAPTOP_USER).uid}",
        f"{home}/.ssh/known_hosts",
    )


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_agent_gets_a_clear_error_and_nothing_else(lab, standin, case):
    plan, args, code, message = CASES[case]
    standin(plan)
    before = laptop_files(lab)
    done = lab.nbremote(*args, env=standin.browser_env, timeout=120)
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert message in done.stderr, done.stderr[-2000:]
    output = done.stdout + done.stderr
    # Nothing the server sent reaches the terminal as a control sequence, and its size is bounded.
    assert not any(c in output for c in "\x1b\x07\x9b\u202e"), output[-2000:]
    assert len(output) < 64 * 1024, len(output)
    assert not Path(PWNED).exists()
    assert not standin.opened.exists(), standin.opened.read_text()
    written = {p for p, mtime in laptop_files(lab).items() if before.get(p) != mtime}
    # Folders above those (~/.local/state made for nbremote's) are not files written.
    stray = sorted(
        p for p in written if not p.startswith(allowed(lab)) and not any(a.startswith(p + "/") for a in allowed(lab))
    )
    assert stray == [], stray
