"""Start-up of the laptop's commands, one source tree against another, in interleaved runs.

    /opt/nbremote-lab/venv/bin/python bench/startup.py [--before main] [--after HEAD] [--rounds 40]

Each tree is `git archive REV` in a temporary folder, run with PYTHONPATH=TREE/src by the same
Python. Each round runs every command once per tree, in an order that alternates from round to
round, so a machine that gets busier or quieter mid-run weighs on both alike. Measured:

- `nbremote --version`: Python start, the CLI's imports, click's parsing;
- `nbremote up -- -oProxyCommand=x`: the same for `up` up to its first check of the host
  (refused at the edge, nothing connects), i.e. the start-up of `up` before any network;
- `nbremote -v up HOST`, to its first ssh: from the start to the moment its log says it runs
  the login's ssh (HOST is a closed port on this machine's loopback, so that login fails at
  once); the time a cold or warm `up` loses to the client before its login begins.
- `up HOST`'s imports before its login, without -v: a Python that imports what the console
  script (nbremote.entry) imports before it begins the login, and exits; -v imports logging,
  which `up HOST` without it no longer does, so this is the start-up that a plain `up HOST`
  pays before its first ssh (less the scan of its arguments and the ssh's own start).

- `nbremote -v up HOST` with a remembered session and a control socket, to its `ssh -O forward`:
  the start-up a warm `up` with a live master pays before it puts the forward back (its URL
  follows two round trips later). The session record and the control path stand in for them
  (a plain file where the socket would be: the forward fails at once and `up` goes on to a
  login that is refused), so only the client's own time is measured. From a95324f on, the
  forward `up` remembers for its words (nbremote/early.py) stands in too: that tree begins the
  forward before its modules are imported.

Prints medians (ms) per command and tree and the after/before ratio; no network, no root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = {"--version": ["--version"], "up (refused at the edge)": ["up", "--", "-oProxyCommand=x"]}
HOST = "ssh://nobody@127.0.0.1:9"  # a closed port: a login fails at once
FIRST_SSH = "up HOST, to its first ssh"
FORWARD = "up HOST, live master, to -O forward"
BEFORE_LOGIN = "up HOST's imports, no -v"
# What nbremote.entry imported before remote.begin_login_for at adc0d55 (when the scan finds
# `up HOST`), the same for both trees; later ones import console after the login begins, so
# this row overstates them by console's own imports.
BEFORE_LOGIN_CODE = "import nbremote.entry, nbremote.remote, nbremote.console, nbremote.errors"


def checkout(rev: str, into: Path) -> Path:
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    tar = into / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(tree, filter="data") if sys.version_info >= (3, 12) else handle.extractall(tree)
    return tree


def once(tree: Path, args: list[str], env: dict[str, str], *, code: str | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nbremote", *args] if code is None else [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(tree / "src")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def live_master(tree: Path, env: dict[str, str]) -> None:
    """A session of HOST remembered, and something at the path of its master's control socket."""
    code = (
        "import json, sys\n"
        "from nbremote import paths, sessions\n"
        "from nbremote.ssh import Connection, parse_target\n"
        "host = sys.argv[1]\n"
        "sessions.save(sessions.SessionRecord(host, '~', '/home/me', 18888, 38119, 't' * 32, 4242, 'lab', 0.0))\n"
        "conn = Connection(parse_target(host), control_dir=paths.runtime_dir(), timeout=1, batch=True, persist=True)\n"
        "conn.control_path.write_text('')\n"
        "try:\n"
        "    from nbremote import early\n"
        "except ImportError:\n"
        "    pass\n"
        "else:  # the forward up remembers for the words first_ssh gives it (a95324f and later)\n"
        "    early.words = [host, '--no-browser', '--timeout', '1']\n"
        "    argv = conn.forward_argv(18888, 38119, '127.0.0.1')\n"
        "    record = sessions.find(host, '~')\n"
        "    fields = sessions.fields_of(record, 'token', 'local_port', 'remote_port', 'addr')\n"
        "    early.hint(argv, conn.control_path, sessions.keeper_pid_file(host, '~'), fields)\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, HOST],
        env={**env, "PYTHONPATH": str(tree / "src")},
        check=True,
        stdin=subprocess.DEVNULL,
    )


def first_ssh(tree: Path, env: dict[str, str], needle: str = "nbremote.ssh: run ssh") -> float:
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "nbremote", "-v", "up", HOST, "--no-browser", "--timeout", "1"],
        env={**env, "PYTHONPATH": str(tree / "src")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = None
    for line in process.stderr:
        if seen is None and needle in line:
            seen = time.perf_counter() - began
    process.wait()
    assert seen is not None, "no ssh in the log of `nbremote -v up`"
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=40)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        trees = {"before": checkout(opts.before, base), "after": checkout(opts.after, base)}
        home = base / "home"
        home.mkdir()
        # An empty home: no profiles, no ssh config, nothing of this machine's user read.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LC_ALL": "C.UTF-8",
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_RUNTIME_DIR": str(home),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for args in COMMANDS.values():
            for tree in trees.values():
                once(tree, args, env)  # warm the page cache and the bytecode of both trees
        for round_ in range(opts.rounds):
            order = list(trees.items()) if round_ % 2 == 0 else list(reversed(trees.items()))
            for name, args in COMMANDS.items():
                for label, tree in order:
                    times.setdefault((name, label), []).append(once(tree, args, env))
            for label, tree in order:
                times.setdefault((FIRST_SSH, label), []).append(first_ssh(tree, env))
            for label, tree in order:
                times.setdefault((BEFORE_LOGIN, label), []).append(once(tree, [], env, code=BEFORE_LOGIN_CODE))
            for label, tree in order:
                live_master(tree, env)
                times.setdefault((FORWARD, label), []).append(first_ssh(tree, env, "-O forward"))
                # Forgotten again, so the other rows find no session, as before this row was measured.
                (Path(env["XDG_STATE_HOME"]) / "nbremote" / "sessions.json").unlink()
    print(f"{opts.rounds} interleaved rounds; before = {opts.before}, after = {opts.after}; median ms")
    print(f"{'command':36} {'before':>8} {'after':>8} {'after/before':>13}")
    for name in [*COMMANDS, FIRST_SSH, BEFORE_LOGIN, FORWARD]:
        before = statistics.median(times[(name, "before")]) * 1000
        after = statistics.median(times[(name, "after")]) * 1000
        print(f"{name:36} {before:8.0f} {after:8.0f} {after / before:13.2f}")


if __name__ == "__main__":
    main()
