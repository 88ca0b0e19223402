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
FIRST_SSH = "up HOST, to its first ssh"


def checkout(rev: str, into: Path) -> Path:
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    tar = into / "src.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(tree, filter="data") if sys.version_info >= (3, 12) else handle.extractall(tree)
    return tree


def once(tree: Path, args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "nbremote", *args],
        env={**env, "PYTHONPATH": str(tree / "src")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


def first_ssh(tree: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "nbremote", "-v", "up", "ssh://nobody@127.0.0.1:9", "--no-browser", "--timeout", "1"],
        env={**env, "PYTHONPATH": str(tree / "src")},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = None
    for line in process.stderr:
        if seen is None and "nbremote.ssh: run ssh" in line:
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
    print(f"{opts.rounds} interleaved rounds; before = {opts.before}, after = {opts.after}; median ms")
    print(f"{'command':28} {'before':>8} {'after':>8} {'after/before':>13}")
    for name in [*COMMANDS, FIRST_SSH]:
        before = statistics.median(times[(name, "before")]) * 1000
        after = statistics.median(times[(name, "after")]) * 1000
        print(f"{name:28} {before:8.0f} {after:8.0f} {after / before:13.2f}")


if __name__ == "__main__":
    main()
