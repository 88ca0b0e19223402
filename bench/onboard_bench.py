"""Onboarding: seconds from `server init` on a fresh server to the café's first notebook.

    sudo /opt/nbremote-lab/venv/bin/python bench/onboard_bench.py [--reps 3]

Builds one Lab (tests/lab/netlab.py) and its home network (tests/lab/homenet.py:
a router with miniupnpd, a café on the WAN side). Each rep starts from fresh
machines: alice has a password and no key on the server, whose sshd runs
Debian's default config on port 22; the laptop has no key, no known_hosts and
no ssh config. Then, timed from one clock (CLOCK_MONOTONIC):

  init       `nbremote server init --yes --allow-user alice` starts (t0)
  invite     init prints the invite and waits
  add        `nbremote add gpubox --invite LINE` starts on the home laptop at
             once (the human's copying is excluded), sshpass typing the password
  joined     add returns: key made and installed, init finished, profile final
  init done  init exits
  notebook   `nbremote up gpubox --no-browser --detach` from the café, over the
             WAN through the router's UPnP forward, returns: Jupyter answers

The figure is t(notebook) - t0, less nothing: no human step is inside it.
Each rep ends with `down`, `server restore` and the laptop's files removed.
The first rep's output is kept next to the results (onboard.transcript.txt):
docs/quickstart.md shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lab"))

import homenet  # noqa: E402
import netlab  # noqa: E402
import serverlab  # noqa: E402

NAME = "gpubox"
PASSWORD = "correct-horse-battery"


def fresh_machines(lab) -> None:
    (lab.user(netlab.ALICE).home / ".ssh" / "authorized_keys").unlink(missing_ok=True)
    laptop = lab.user(netlab.LAPTOP_USER).home
    for name in ("id_ed25519", "id_ed25519.pub", "known_hosts", "config", "config.nbremote-backup"):
        (laptop / ".ssh" / name).unlink(missing_ok=True)
    shutil.rmtree(laptop / ".config" / "nbremote", ignore_errors=True)


def one(lab, home, state: Path, workdir: Path) -> dict:
    fresh_machines(lab)
    env = lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state)})
    err = (workdir / "init.err").open("w")
    t0 = time.monotonic()
    init = lab.server_popen(
        [
            str(netlab.LAB_VENV / "bin" / "python"),
            "-m",
            "nbremote",
            "server",
            "init",
            "--yes",
            "--allow-user",
            netlab.ALICE,
            "--echo-url",
            homenet.ECHO_URL,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
    )
    line = None
    with selectors.DefaultSelector() as sel:
        sel.register(init.stdout, selectors.EVENT_READ)
        while line is None and time.monotonic() - t0 < 120:
            if sel.select(0.05):
                text = init.stdout.readline()
                if not text:
                    break
                found = re.search(r"--invite (\S+)", text)
                line = found.group(1) if found else None
    if line is None:
        raise RuntimeError(f"init printed no invite: {(workdir / 'init.err').read_text()}")
    t_invite = time.monotonic()
    add = lab.laptop_exec(
        ["sshpass", "-p", PASSWORD, *lab.nbremote_argv("add", NAME, "--invite", line)],
        env=lab.nbremote_env(),
        timeout=300,
    )
    t_joined = time.monotonic()
    if add.returncode != 0:
        raise RuntimeError(f"add failed: {add.stderr}")
    init.communicate(timeout=300)
    t_init = time.monotonic()
    if init.returncode != 0:
        raise RuntimeError(f"init failed: {(workdir / 'init.err').read_text()}")
    up = home.cafe_laptop(
        lab.nbremote_argv("up", NAME, "--no-browser", "--detach"), env=lab.nbremote_env(), timeout=300
    )
    t_up = time.monotonic()
    if up.returncode != 0:
        raise RuntimeError(f"up from the café failed: {up.stderr}")
    home.cafe_laptop(lab.nbremote_argv("down", NAME), env=lab.nbremote_env(), timeout=120)
    restored = serverlab.server_cli(lab, "restore", state_dir=state)
    if restored.returncode != 0:
        raise RuntimeError(f"restore failed: {restored.stderr}")
    lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])
    home.stop_miniupnpd()
    home.start_miniupnpd()  # its lease file goes: the next rep asks a router that forwards nothing
    transcript = "\n".join(
        [
            "$ sudo nbremote server init --allow-user alice --yes",
            (workdir / "init.err").read_text().rstrip(),
            f"  nbremote add {NAME} --invite {line}",
            f"$ nbremote add {NAME} --invite {line}",
            add.stderr.rstrip(),
            f"$ nbremote up {NAME} --no-browser --detach   # in the café",
            up.stderr.rstrip(),
            up.stdout.rstrip(),
        ]
    )
    (workdir / "transcript.txt").write_text(transcript + "\n")
    return {
        "invite": t_invite - t0,
        "add": t_joined - t_invite,
        "init_done": t_init - t0,
        "up_from_cafe": t_up - t_init,
        "total": t_up - t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "onboard.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nbr-onboard-bench-"))
    lab = netlab.Lab.build(workdir / "lab")
    samples = []
    try:
        home = homenet.HomeNet.build(lab, workdir / "homenet")
        shadow = subprocess.run(["getent", "shadow", netlab.ALICE], capture_output=True, text=True, check=True)
        subprocess.run(["chpasswd"], input=f"{netlab.ALICE}:{PASSWORD}\n", text=True, check=True)
        try:
            with serverlab.private_etc(lab, workdir):
                for rep in range(args.reps):
                    sample = one(lab, home, workdir / "state", workdir)
                    samples.append(sample)
                    if rep == 0:
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(workdir / "transcript.txt", args.out.with_suffix(".transcript.txt"))
                    print(f"rep {rep + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in sample.items()), flush=True)
                    lab.cleanup_between_tests()
        finally:
            subprocess.run(["usermod", "-p", shadow.stdout.split(":")[1], netlab.ALICE], check=True)
            home.teardown()
    finally:
        lab.teardown()
    summary = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{os.cpu_count()} cores, {platform.release()}",
        "reps": args.reps,
        "samples": samples,
        "median": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(json.dumps({"median": {k: round(v, 2) for k, v in summary.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
