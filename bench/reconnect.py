"""How fast the tunnel serves again after an outage: nbremote's keeper against autossh.

    sudo /opt/nbremote-lab/venv/bin/python bench/reconnect.py [--rtts 0,100] [--outages 5,60] [--reps 2] [--slurm]

One Lab (tests/lab/netlab.py) whose laptop–server link is a DelayLink
(tests/lab/delaylink.py, rtt/2 held each way). In each trial both tunnels run
side by side from the same laptop to the same Jupyter, so they live through
the very same outage:

  nbremote     `nbremote up server --detach`: its background keeper
  autossh      `autossh -M 0 -N -o ServerAliveInterval=15 -o ServerAliveCountMax=3
               -o ExitOnForwardFailure=yes -L P:127.0.0.1:R server` (Debian's autossh,
               AUTOSSH_GATETIME=0 so it keeps retrying)

With --slurm the lab's server is also a single-node Slurm cluster
(tests/lab/slurmlab.py): `up` runs Jupyter in a batch job and both tunnels go
through the login node to the node's address, as on a cluster.

The outage is real loss: DelayLink.set_down drops every packet both ways, so
neither end sees an error, as when a laptop sleeps or Wi-Fi drops. A poller in
the laptop namespace acts like a browser tab: every 0.2 s it opens a new
connection to each local port and GETs /api/status with the token (1 s
timeout). Reported: seconds from the link coming back to the first 200 on
each port (capped at 120 s).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import netlab  # noqa: E402
from delaylink import DelayLink  # noqa: E402
from slurmlab import SlurmCluster  # noqa: E402

CAP = 120.0

POLLER = """
import sys, threading, time, urllib.request
token = sys.argv[1]
ports = [int(p) for p in sys.argv[2:]]
def poll(port):
    while True:
        started = time.monotonic()
        req = urllib.request.Request("http://127.0.0.1:%d/api/status" % port,
                                     headers={"Authorization": "token " + token})
        try:
            ok = urllib.request.urlopen(req, timeout=1).status == 200
        except Exception:
            ok = False
        if ok:
            print("%d %.4f" % (port, time.monotonic()), flush=True)
        time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
for port in ports:
    threading.Thread(target=poll, args=(port,), daemon=True).start()
time.sleep(3600)
"""


def trial(lab: netlab.Lab, link: DelayLink, outage: float, cluster: SlurmCluster | None) -> dict[str, float]:
    slurm = ("--slurm", "--time=30") if cluster is not None else ()
    up = lab.nbremote("up", "server", *slurm, "--no-browser", "--detach", "--json", timeout=120)
    result = json.loads(up.stdout)
    token = re.search(r"token=([A-Za-z0-9]+)", result["url"]).group(1)
    ours, remote = result["local_port"], result["remote_port"]
    addr = result.get("remote_addr") or "127.0.0.1"  # a Slurm job's node, as the login node reaches it
    theirs = ours + 1
    autossh = lab.laptop_popen(
        [
            "autossh",
            "-M",
            "0",
            "-N",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "BatchMode=yes",
            "-L",
            f"127.0.0.1:{theirs}:{addr}:{remote}",
            "server",
        ],
        env={"AUTOSSH_GATETIME": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    poller = lab.laptop_popen(
        [str(netlab.LAB_PYTHON), "-c", POLLER, token, str(ours), str(theirs)], stdout=subprocess.PIPE
    )
    try:
        seen: dict[int, float] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:  # both tunnels serve before the cut
            port, when = poller.stdout.readline().split()
            seen[int(port)] = float(when)
        assert len(seen) == 2, "a tunnel never served before the outage"
        link.set_down(True)
        time.sleep(outage)
        link.set_down(False)
        back = time.monotonic()
        first: dict[int, float] = {}
        while len(first) < 2 and time.monotonic() < back + CAP:
            line = poller.stdout.readline()
            port, when = line.split()
            if float(when) > back and int(port) not in first:
                first[int(port)] = float(when) - back
        return {"nbremote": first.get(ours, CAP), "autossh": first.get(theirs, CAP)}
    finally:
        for process in (poller, autossh):
            process.kill()
            process.wait()
        if cluster is not None:
            cluster.cancel_all()  # before the cleanup kills the user's processes under Slurm
        lab.cleanup_between_tests()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtts", default="0,100")
    parser.add_argument("--outages", default="5,60")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--slurm", action="store_true", help="Jupyter in a Slurm job behind the login node")
    parser.add_argument("--out", default=None, help="[default: bench/results/reconnect(-slurm).json]")
    args = parser.parse_args()
    out = Path(args.out or REPO / "bench" / "results" / f"reconnect{'-slurm' if args.slurm else ''}.json")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        lab = netlab.Lab.build(Path(work))
        cluster = None
        try:
            if args.slurm:
                cluster = SlurmCluster.start(lab)
            for rtt in [float(r) for r in args.rtts.split(",")]:
                link = lab.replace_link(functools.partial(DelayLink.start, delay_ms=rtt / 2))
                began = time.monotonic()
                lab.ssh("-o", "ControlMaster=no", "true")
                login = time.monotonic() - began
                for outage in [float(o) for o in args.outages.split(",")]:
                    samples = [trial(lab, link, outage, cluster) for _ in range(args.reps)]
                    row = {"rtt_ms": rtt, "outage_s": outage, "ssh_login_s": login, "samples": samples}
                    for method in ("nbremote", "autossh"):
                        row[method] = statistics.median(s[method] for s in samples)
                    rows.append(row)
                    print(
                        f"rtt {rtt:g} ms, outage {outage:g} s: nbremote {row['nbremote']:.2f} s, "
                        f"autossh {row['autossh']:.2f} s (login {row['ssh_login_s']:.2f} s)",
                        flush=True,
                    )
        finally:
            if cluster is not None:
                cluster.stop()
            lab.teardown()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
