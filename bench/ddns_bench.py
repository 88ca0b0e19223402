"""From the WAN address changing to the café's `up` answering with the DNS name (`server ddns`).

    sudo /opt/nbremote-lab/venv/bin/python bench/ddns_bench.py [--reps 3] [--period 10]

Builds one Lab (tests/lab/netlab.py), its home network (tests/lab/homenet.py: router with
NAT, miniupnpd and a forward of port 22 to the box, the café on the internet side) and
BIND 9 on the internet side (tests/lab/dnslab.py), authoritative for nbr.test. The box
runs `server ddns gpubox.nbr.test --keep --period P` as root; the laptop in the café has
the profile from `server invite` (LAN addresses, the name, the WAN address) and resolves
through that BIND.

Each rep: the laptop user's processes (masters, keeper) ended; the router's WAN address moved to one never
used before (the old one dropped at once); from that moment, dig from the café polls the
name every 50 ms until it answers the new address (the name follows); then `nbremote up
gpubox --no-browser --detach` from the café, timed to its exit, must say it went via the
name. Reported per rep: the name's delay, the `up`, their sum; and beside them a cold
`up` by the name with no change (the login), medians of reps. Target: sum <= P + one
login, the name's delay alone <= P + one check (the router's answer and the update).
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

import dnslab  # noqa: E402
import homenet  # noqa: E402
import netlab  # noqa: E402

NAME = dnslab.NAME


def server_nbremote(lab, state: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    done = lab.server_exec(
        [str(netlab.LAB_PYTHON), "-m", "nbremote", "server", *args],
        env=lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state)}),
        timeout=120,
        **kw,
    )
    if done.returncode != 0:
        raise RuntimeError(f"server {' '.join(args)} failed: {done.stderr}")
    return done


def cafe_up(lab, dns) -> tuple[float, str]:
    started = time.monotonic()
    done = dns.cafe_laptop(lab.nbremote_argv("up", "gpubox", "--no-browser", "--detach"), env=lab.nbremote_env())
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"up from the café failed: {done.stderr}")
    return elapsed, done.stderr


def end_laptop_processes(lab) -> None:
    """The laptop user's processes (ssh masters, the detached `up`'s keeper), SIGKILLed by pid:
    the next `up` logs in again instead of finding a master a keeper rebuilt."""
    lab.kill_user_processes(netlab.LAPTOP_USER)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--period", type=float, default=10.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nbr-ddns-bench-"))
    lab = netlab.Lab.build(workdir / "lab")
    home = dns = keeper = None
    try:
        home = homenet.HomeNet.build(lab, workdir / "home")
        home.forward_port(22, 22)
        dns = dnslab.DnsLab.build(home, workdir / "dns")
        key = dns.key_file(workdir / "ddns.key")
        state = workdir / "state"
        server_nbremote(lab, state, "ddns", NAME, "--server", dnslab.DNS_ADDR, "--key", str(key))
        invite = json.loads(
            server_nbremote(lab, state, "invite", "--user", netlab.ALICE, "--port", "22", "--json").stdout
        )
        added = dns.cafe_laptop(
            lab.nbremote_argv("add", "gpubox", "--invite", invite["invite"], "--timeout", "2"), env=lab.nbremote_env()
        )
        if added.returncode != 0:
            raise RuntimeError(added.stderr)
        cafe_up(lab, dns)  # Jupyter's first start is not what is measured
        logins = []
        for _ in range(args.reps):
            end_laptop_processes(lab)
            login_s, said = cafe_up(lab, dns)
            if f"via WAN {NAME}:22" not in said:
                raise RuntimeError(f"a cold `up` did not log in via the name: {said}")
            logins.append(login_s)

        log = workdir / "ddns.log"
        keeper = lab.server_popen(
            [str(netlab.LAB_PYTHON), "-m", "nbremote", "server", "ddns", NAME, "--server", dnslab.DNS_ADDR]
            + ["--key", str(key), "--keep", "--period", f"{args.period:g}", "--timeout", "1"],
            env=lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state)}),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        while "checking every" not in log.read_text():
            if keeper.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.05)
        rows = []
        for rep in range(args.reps):
            end_laptop_processes(lab)
            new = f"11.22.33.{20 + rep}"
            home.renumber_wan(new)
            changed = time.monotonic()
            while dns.lookup(NAME) != [new]:
                if time.monotonic() - changed > 3 * args.period + 30:
                    raise RuntimeError(log.read_text())
                time.sleep(0.05)
            followed = time.monotonic() - changed
            up_s, said = cafe_up(lab, dns)
            if f"via WAN {NAME}:22" not in said:
                raise RuntimeError(f"`up` did not go via the name: {said}")
            rows.append({"address": new, "name_follows_s": round(followed, 3), "up_s": round(up_s, 3)})
            print(json.dumps(rows[-1]), flush=True)
        checks = [float(line.rsplit(None, 2)[-2]) for line in log.read_text().splitlines() if "→" in line]
        result = {
            "period_s": args.period,
            "login_up_s_median": round(statistics.median(logins), 3),
            "login_up_s_all": [round(v, 3) for v in logins],
            "check_s_all": checks,
            "reps": rows,
            "total_s_all": [round(r["name_follows_s"] + r["up_s"], 3) for r in rows],
        }
        print(json.dumps(result, indent=1))
    finally:
        if keeper is not None and keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGTERM)
            keeper.wait(10)
        if dns is not None:
            dns.teardown()
        if home is not None:
            home.teardown()
        lab.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
