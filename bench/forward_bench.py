"""A new forward's first answer: `nbremote forward server PORT` through a live master.

    sudo /opt/nbremote-lab/venv/bin/python bench/forward_bench.py [--rtts 0,20,100] [--reps 5]

One Lab (tests/lab/netlab.py) whose laptop–server link is a DelayLink holding rtt/2 each way;
`nbremote up server --detach` first, so the session's master is live; a plain HTTP server of
the server user listens on 127.0.0.1:6006 there (as TensorBoard would). Each rep, in the laptop
namespace as the laptop user, one Python process times:

  command       `nbremote forward server 6006` until it exits 0 (the agent's check that a
                program of the user listens there, then `ssh -O forward`)
  first answer  from then to the first HTTP 200 through localhost:6006 (a new TCP connection:
                ssh opens a channel to the port, then the request and its answer)

then `nbremote forward server 6006 --remove`. Medians per RTT, with the target for the first
answer: 2 RTT + 0.1 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))

import netlab  # noqa: E402
from delaylink import DelayLink  # noqa: E402

PORT = 6006

TIMER = """
import json, subprocess, sys, time, urllib.request
argv = sys.argv[1:]
t0 = time.monotonic()
done = subprocess.run(argv + ["forward", "server", "%d"], capture_output=True, text=True)
t1 = time.monotonic()
assert done.returncode == 0, done.stderr
status = urllib.request.urlopen("http://127.0.0.1:%d/", timeout=10).status
t2 = time.monotonic()
assert status == 200
removed = subprocess.run(argv + ["forward", "server", "%d", "--remove"], capture_output=True, text=True)
assert removed.returncode == 0, removed.stderr
print(json.dumps({"command": t1 - t0, "first_answer": t2 - t1}))
""" % (PORT, PORT, PORT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtts", default="0,20,100")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "forward.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        lab = netlab.Lab.build(Path(work))
        try:
            for rtt in [float(r) for r in args.rtts.split(",")]:
                lab.cleanup_between_tests()
                lab.replace_link(functools.partial(DelayLink.start, delay_ms=rtt / 2))
                up = lab.nbremote("up", "server", "--no-browser", "--detach", timeout=120)
                assert up.returncode == 0, up.stderr
                server = lab.server_popen(
                    [str(netlab.LAB_PYTHON), "-m", "http.server", str(PORT), "--bind", "127.0.0.1"],
                    user=netlab.ALICE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                probe = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), timeout=1)"
                while lab.server_exec([str(netlab.LAB_PYTHON), "-c", probe]).returncode != 0:
                    pass
                try:
                    samples = []
                    for _ in range(args.reps):
                        done = lab.laptop_exec(
                            [str(netlab.LAB_PYTHON), "-c", TIMER, *lab.nbremote_argv()],
                            env=lab.nbremote_env(),
                            timeout=120,
                        )
                        assert done.returncode == 0, done.stderr
                        samples.append(json.loads(done.stdout))
                finally:
                    server.kill()
                    server.wait()
                    lab.nbremote("down", "server")
                row = {"rtt_ms": rtt, "samples": samples, "target_first_answer": 2 * rtt / 1000 + 0.1}
                for what in ("command", "first_answer"):
                    row[what] = statistics.median(s[what] for s in samples)
                rows.append(row)
                print(
                    f"rtt {rtt:g} ms: command {row['command']:.3f} s, first answer {row['first_answer']:.3f} s "
                    f"(target {row['target_first_answer']:.3f} s)",
                    flush=True,
                )
        finally:
            lab.teardown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
