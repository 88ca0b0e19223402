"""From the WAN address changing to the café's `up` answering, with the fresh profile after one
LAN connection (issue 13, part 1).

    sudo /opt/nbremote-lab/venv/bin/python bench/wan_change_bench.py [--reps 3]

Builds one Lab (tests/lab/netlab.py) and its home network (tests/lab/homenet.py): a router
with miniupnpd and a café on the internet side. Alice's `server expose --external-port 22022
--keep --lease 2` keeps the forward and records the router's WAN address at each renewal
(every second here; half the lease in real use). The laptop's profile `gpubox` holds the
server's LAN address and the WAN address with port 22022.

Each rep: the café's `up gpubox --detach --no-browser` with the current address (the
baseline), `down`; then the router is renumbered (homenet's renumber_wan, the old address
dropped at once) and the clock starts; the box's record follows at its next renewal; the
laptop, at home, runs `nbremote ls gpubox` once (the agent's hello brings the address into the
profile); its ssh master ends (the laptop leaves home); then, in the café, `up gpubox --detach
--no-browser`. Reported:
seconds from the renumbering to the record, the LAN `ls`, the café's `up`, the whole, and the
café `up` after the change over the baseline. The laptop moves from home to café at once: the
whole is what nbremote adds to the walk.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lab"))

import homenet  # noqa: E402
import netlab  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_bench import end_masters  # noqa: E402

EXTERNAL = 22022
ADDRESSES = ("11.22.33.2", "11.22.33.3")  # the router's WAN address takes these in turn


def timed(run, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    done = run(*args)
    return time.monotonic() - started, done


def recorded(folder: Path) -> str | None:
    try:
        return json.loads((folder / "wan-ip.json").read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nbr-wan-bench-"))
    lab = netlab.Lab.build(workdir / "lab")
    home = keeper = None
    rows = []
    try:
        home = homenet.HomeNet.build(lab, workdir / "home")
        state = lab.user(netlab.ALICE).home / ".local" / "state" / "nbremote-server"
        keeper = lab.server_popen(
            [str(netlab.LAB_PYTHON), "-m", "nbremote", "server", "expose", "--external-port", str(EXTERNAL)]
            + ["--keep", "--lease", "2"],
            user=netlab.ALICE,
            env=lab.nbremote_env(),
            stdout=(workdir / "expose.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while recorded(state) != homenet.WAN_ADDR:
            if keeper.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "expose.log").read_text())
            time.sleep(0.1)
        added = lab.nbremote(
            "add",
            "gpubox",
            "--address",
            netlab.SERVER_ADDR,
            "--address",
            f"{homenet.WAN_ADDR}:{EXTERNAL}",
            "--user",
            netlab.ALICE,
        )
        if added.returncode != 0:
            raise RuntimeError(added.stderr)

        def cafe(*argv: str) -> subprocess.CompletedProcess:
            return home.cafe_laptop(lab.nbremote_argv(*argv), env=lab.nbremote_env(), timeout=180)

        first = cafe("up", "gpubox", "--detach", "--no-browser")  # Jupyter's first start is not measured
        if first.returncode != 0:
            raise RuntimeError(first.stderr)
        cafe("down", "gpubox")
        for rep in range(args.reps):
            before, done = timed(cafe, "up", "gpubox", "--detach", "--no-browser")
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            cafe("down", "gpubox")
            new = ADDRESSES[rep % 2]
            home.renumber_wan(new)
            began = time.monotonic()
            while recorded(state) != new:
                if time.monotonic() - began > 30:
                    raise RuntimeError((workdir / "expose.log").read_text())
                time.sleep(0.02)
            record_s = time.monotonic() - began
            lan_s, done = timed(lab.nbremote, "ls", "gpubox")
            if done.returncode != 0 or f"→ {new}:{EXTERNAL}" not in done.stderr:
                raise RuntimeError(done.stdout + done.stderr)
            # The laptop leaves the LAN: its masters from home would serve the café's `up` (one runtime dir here).
            end_masters(lab)
            cafe_s, done = timed(cafe, "up", "gpubox", "--detach", "--no-browser")
            if done.returncode != 0 or f"via WAN {new}:{EXTERNAL}" not in done.stderr:
                raise RuntimeError(done.stderr)
            cafe("down", "gpubox")
            row = {
                "rep": rep,
                "cafe_up_before_s": round(before, 3),
                "record_s": round(record_s, 3),
                "lan_ls_s": round(lan_s, 3),
                "cafe_up_after_s": round(cafe_s, 3),
                "whole_s": round(record_s + lan_s + cafe_s, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if keeper is not None and keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGTERM)
            keeper.wait(10)
        if home is not None:
            home.teardown()
        lab.teardown()
    summary = {
        key: round(statistics.median(r[key] for r in rows), 3)
        for key in ("cafe_up_before_s", "record_s", "lan_ls_s", "cafe_up_after_s", "whole_s")
    }
    summary["after_over_before"] = round(summary["cafe_up_after_s"] / summary["cafe_up_before_s"], 2)
    print(json.dumps({"rows": rows, "medians": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
