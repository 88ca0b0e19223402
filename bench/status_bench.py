"""`nbremote status` over 1, 5 and 20 hosts at 100 ms round trip.

    sudo /opt/nbremote-lab/venv/bin/python bench/status_bench.py [--reps 5] [--rtt 100] [--counts 1,5,20]

Builds one Lab (tests/lab/netlab.py) with a DelayLink holding every packet
rtt/2 each way. The lab has one server namespace, so N "hosts" are N ssh
aliases on the laptop (bench1 … benchN), all to that server's sshd: each alias
is a separate ssh connection with its own ControlMaster, login and agent, so
the laptop side does exactly the work of N servers, while the server side
serves N at once on one machine (which makes the numbers pessimistic, not
optimistic). sshd's MaxStartups is raised to 100 in the lab's private
/etc/ssh for the run: the default (10:30:100) would drop a third of 20
simultaneous logins, which real separate servers would not.

Each sample is the wall time of `nbremote status --json bench1 … benchN`
from start to exit, cold (no master), run `reps` times, interleaved across
counts. Raw samples go to OUT/status.json and a table to stdout.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402


def add_aliases(lab: netlab.Lab, count: int) -> None:
    laptop = lab.user(netlab.LAPTOP_USER)
    config = laptop.home / ".ssh" / "config"
    config.write_text(config.read_text() + "".join(
        f"Host bench{i}\n    HostName {netlab.SERVER_ADDR}\n    User {netlab.ALICE}\n\n"
        for i in range(1, count + 1)))


def allow_many_logins(lab: netlab.Lab) -> None:
    config = lab.server_etc_ssh / "sshd_config"
    config.write_text(config.read_text() + "\nMaxStartups 100\n")
    lab.reload_sshd()


def one_run(lab: netlab.Lab, count: int, timeout: float) -> dict:
    hosts = [f"bench{i}" for i in range(1, count + 1)]
    started = time.monotonic()
    done = lab.nbremote("status", "--json", "--timeout", str(timeout), *hosts, timeout=120)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"status failed: {done.stderr}")
    reply = json.loads(done.stdout)["hosts"]
    unreachable = [h["label"] for h in reply if not h["reachable"]]
    return {"count": count, "seconds": seconds, "unreachable": unreachable,
            "per_host": [h["seconds"] for h in reply], "rtt_ms": [h["rtt_ms"] for h in reply]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rtt", type=float, default=100.0, help="round trip in ms")
    parser.add_argument("--counts", default="1,5,20")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    workdir = Path("/tmp") / f"nbr-status-bench-{int(time.time())}"
    lab = netlab.Lab.build(workdir, link_factory=functools.partial(delaylink.DelayLink.start,
                                                                    delay_ms=args.rtt / 2))
    samples = []
    try:
        add_aliases(lab, max(counts))
        allow_many_logins(lab)
        one_run(lab, 1, args.timeout)  # warm the page cache: the first python start is slower
        for rep in range(args.reps):
            for count in counts:
                sample = one_run(lab, count, args.timeout)
                sample["rep"] = rep
                samples.append(sample)
                print(f"rep {rep} n={count:>2}: {sample['seconds']:.2f} s"
                      + (f"  unreachable: {sample['unreachable']}" if sample["unreachable"] else ""), flush=True)
    finally:
        lab.teardown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "status.json").write_text(json.dumps({"rtt_ms": args.rtt, "samples": samples}, indent=1))
    medians = {c: statistics.median(s["seconds"] for s in samples if s["count"] == c) for c in counts}
    print(f"\nnbremote status at {args.rtt:g} ms RTT, median of {args.reps}:")
    print("hosts  median s  min s   max s   × one host")
    for c in counts:
        values = [s["seconds"] for s in samples if s["count"] == c]
        print(f"{c:>5}  {medians[c]:8.2f}  {min(values):6.2f}  {max(values):6.2f}  {medians[c] / medians[counts[0]]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
