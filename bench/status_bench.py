"""`nbremote status` over 1, 5 and 20 hosts at 100 ms round trip.

    sudo /opt/nbremote-lab/venv/bin/python bench/status_bench.py [--reps 5] [--rtt 100] [--counts 1,5,20]
        [--baseline-src OLD/src] [--ssh-option KexAlgorithms=curve25519-sha256]

Builds one Lab (tests/lab/netlab.py) with a DelayLink holding every packet
rtt/2 each way. The lab has one server namespace, so N "hosts" are N ssh
aliases on the laptop (bench1 … benchN), all to that server's sshd: each alias
is a separate ssh connection with its own login and agent, so the laptop side
does exactly the work of N servers, while the server side serves N at once on
one machine (which makes the numbers pessimistic, not optimistic). sshd's
MaxStartups is raised to 100 in the lab's private /etc/ssh for the run: the
default (10:30:100) would drop a third of 20 simultaneous logins, which real
separate servers would not.

Each sample is the wall time of `nbremote status --json bench1 … benchN`
from start to exit, cold (no master), run `reps` times, interleaved across
counts and arms, with the 1-minute load average of the machine at its start
(others share it: a sample taken under load is slower for reasons of their
own). The arms: this tree; with --baseline-src, another tree's package source
(e.g. `git worktree add /tmp/old COMMIT`, then /tmp/old/src), so before and
after are measured in the same run; with --ssh-option, this tree again with
that line in every alias (sbench1 … sbenchN), as a user would put it in
~/.ssh/config. Raw samples go to OUT/status.json and a table to stdout.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402


def add_aliases(lab: netlab.Lab, prefix: str, count: int, options: list[str]) -> None:
    laptop = lab.user(netlab.LAPTOP_USER)
    config = laptop.home / ".ssh" / "config"
    extra = "".join(f"    {key} {value}\n" for key, value in (o.split("=", 1) for o in options))
    config.write_text(
        config.read_text()
        + "".join(
            f"Host {prefix}{i}\n    HostName {netlab.SERVER_ADDR}\n    User {netlab.ALICE}\n{extra}\n"
            for i in range(1, count + 1)
        )
    )


def allow_many_logins(lab: netlab.Lab) -> None:
    config = lab.server_etc_ssh / "sshd_config"
    config.write_text(config.read_text() + "\nMaxStartups 100\n")
    lab.reload_sshd()


def one_run(lab: netlab.Lab, prefix: str, count: int, timeout: float) -> dict:
    hosts = [f"{prefix}{i}" for i in range(1, count + 1)]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = lab.nbremote("status", "--json", "--timeout", str(timeout), *hosts, timeout=120)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The laptop side's CPU: nbremote and every ssh it ran (all waited for, so all counted).
    laptop_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"status failed: {done.stderr}")
    reply = json.loads(done.stdout)["hosts"]
    unreachable = [h["label"] for h in reply if not h["reachable"]]
    return {
        "count": count,
        "seconds": seconds,
        "unreachable": unreachable,
        "load": load,
        "laptop_cpu": laptop_cpu,
        "per_host": [h["seconds"] for h in reply],
        "rtt_ms": [h["rtt_ms"] for h in reply],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rtt", type=float, default=100.0, help="round trip in ms")
    parser.add_argument("--counts", default="1,5,20")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--baseline-src", type=Path, help="another tree's src/ to time in the same run")
    parser.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="time this tree again with this ssh_config line in every alias",
    )
    args = parser.parse_args()
    if any("=" not in o for o in args.ssh_option):
        parser.error("--ssh-option takes KEY=VALUE")
    if args.baseline_src and not (args.baseline_src / "nbremote" / "__init__.py").is_file():
        parser.error(f"--baseline-src {args.baseline_src}: no nbremote package there")
    counts = [int(c) for c in args.counts.split(",")]
    arms = [("this tree", REPO / "src", "bench")]
    if args.baseline_src:
        arms.append(("baseline", args.baseline_src.resolve(), "bench"))
    if args.ssh_option:
        arms.append(("this tree, " + " ".join(args.ssh_option), REPO / "src", "sbench"))
    workdir = Path("/tmp") / f"nbr-status-bench-{int(time.time())}"
    lab = netlab.Lab.build(workdir, link_factory=functools.partial(delaylink.DelayLink.start, delay_ms=args.rtt / 2))
    samples = []
    try:
        add_aliases(lab, "bench", max(counts), [])
        add_aliases(lab, "sbench", max(counts), args.ssh_option)
        allow_many_logins(lab)
        for rep in range(args.reps):
            for arm, src, prefix in arms:
                lab.sync_src(src)
                if rep == 0:
                    one_run(lab, prefix, 1, args.timeout)  # warm the page cache: a first start is slower
                for count in counts:
                    sample = one_run(lab, prefix, count, args.timeout)
                    sample.update(rep=rep, arm=arm)
                    samples.append(sample)
                    print(
                        f"rep {rep} {arm:<12} n={count:>2}: {sample['seconds']:.2f} s, laptop CPU "
                        f"{sample['laptop_cpu']:.2f} s  (load {sample['load']:.2f})"
                        + (f"  unreachable: {sample['unreachable']}" if sample["unreachable"] else ""),
                        flush=True,
                    )
    finally:
        lab.teardown()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "status.json").write_text(
        json.dumps(
            {
                "rtt_ms": args.rtt,
                "ssh_options": args.ssh_option,
                "baseline_src": str(args.baseline_src or ""),
                "samples": samples,
            },
            indent=1,
        )
    )
    print(f"\nnbremote status at {args.rtt:g} ms RTT, median of {args.reps}:")
    print("arm                  hosts  median s  min s   max s   × one host  laptop CPU s")
    for arm, _, _ in arms:
        values = {c: [s["seconds"] for s in samples if s["count"] == c and s["arm"] == arm] for c in counts}
        one = statistics.median(values[counts[0]])
        for c in counts:
            median = statistics.median(values[c])
            cpu = statistics.median(s["laptop_cpu"] for s in samples if s["count"] == c and s["arm"] == arm)
            print(
                f"{arm[:20]:<20} {c:>5}  {median:8.2f}  {min(values[c]):6.2f}  {max(values[c]):6.2f}  "
                f"{median / one:9.2f}  {cpu:11.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
