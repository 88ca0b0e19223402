"""Address selection: time to a working session when the preferred address is dead.

    sudo /opt/nbremote-lab/venv/bin/python bench/address_bench.py [--reps 5] [--rtts 0,100]

Builds one Lab (tests/lab/netlab.py) with a DelayLink (tests/lab/delaylink.py)
between laptop and server holding every packet rtt/2 each way. The server also
answers on a second address, 192.168.77.3; an nft drop in the server's
namespace makes its first address, 192.168.77.2, a black hole for ssh (the
laptop sees silence, as on a dead path). Two profiles, interleaved rep by rep:

  good only   addresses = [192.168.77.3]
  dead first  addresses = [192.168.77.2, 192.168.77.3]

Each rep is `nbremote up NAME --no-browser --detach` (returns once Jupyter
answers through the tunnel: a working session), timed from start to exit, then
`nbremote down NAME`. Also reported: the race's own login time, from
`nbremote hosts --json`. Target: dead first costs at most one stagger step
(0.25 s) more than good only.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402

SECOND = "192.168.77.3"
PROFILES = {"good": (SECOND,), "deadfirst": (netlab.SERVER_ADDR, SECOND)}


def nbremote(lab, *args: str) -> subprocess.CompletedProcess:
    done = lab.nbremote(*args, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"nbremote {' '.join(args)} failed: {done.stderr}")
    return done


def setup(lab, rtt_ms: float) -> None:
    lab.replace_link(functools.partial(delaylink.DelayLink.start, delay_ms=rtt_ms / 2))
    ifname = lab.link.ifname
    subprocess.run(["ip", "-n", lab.server_ns, "addr", "add", f"{SECOND}/24", "dev", ifname], check=True)
    subprocess.run(
        ["ip", "netns", "exec", lab.server_ns, "nft", "-f", "-"],
        check=True,
        text=True,
        input=(
            "table inet nbrbench {\n chain input {\n type filter hook input priority -10;\n"
            f" ip daddr {netlab.SERVER_ADDR} tcp dport 22 drop;\n }}\n}}\n"
        ),
    )


def one(lab, name: str) -> tuple[float, float]:
    started = time.monotonic()
    nbremote(lab, "up", name, "--no-browser", "--detach")
    elapsed = time.monotonic() - started
    hosts = {h["name"]: h for h in json.loads(nbremote(lab, "hosts", "--json").stdout)["hosts"]}
    last = hosts[name]["last_path"]
    assert last["address"] == f"{SECOND}:22", last
    nbremote(lab, "down", name)
    return elapsed, last["login_s"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rtts", default="0,100")
    args = parser.parse_args()
    lab = netlab.Lab.build(
        Path(tempfile.mkdtemp(prefix="nbr-address-bench-")),
        link_factory=functools.partial(delaylink.DelayLink.start, delay_ms=0),
    )
    results = []
    try:
        for rtt in [float(r) for r in args.rtts.split(",")]:
            # A fresh profile set per RTT: `add` probes every address (the dead one times out).
            subprocess.run(["rm", "-rf", str(lab.user(netlab.LAPTOP_USER).home / ".config" / "nbremote")])
            setup(lab, rtt)
            for name, addresses in PROFILES.items():
                flags = [f for a in addresses for f in ("--address", a)]
                nbremote(lab, "add", name, *flags, "--user", netlab.ALICE, "--timeout", "1")
            one(lab, "good")  # Jupyter's first start is not what is measured
            times: dict[str, list[tuple[float, float]]] = {n: [] for n in PROFILES}
            for _ in range(args.reps):
                for name in PROFILES:
                    times[name].append(one(lab, name))
            row = {"rtt_ms": rtt}
            for name, samples in times.items():
                row[name] = {
                    "up_s": round(statistics.median(s[0] for s in samples), 3),
                    "login_s": round(statistics.median(s[1] for s in samples), 3),
                    "up_all": [round(s[0], 3) for s in samples],
                    "login_all": [round(s[1], 3) for s in samples],
                }
            row["extra_up_s"] = round(row["deadfirst"]["up_s"] - row["good"]["up_s"], 3)
            row["extra_login_s"] = round(row["deadfirst"]["login_s"] - row["good"]["login_s"], 3)
            results.append(row)
            print(json.dumps(row), flush=True)
            lab.cleanup_between_tests()
    finally:
        lab.teardown()
    print(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
