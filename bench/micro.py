"""Side measurements behind the analysis in docs/benchmarks.md (not part of run.py).

    sudo /opt/nbremote-lab/venv/bin/python bench/micro.py [--rtt 100] [--reps 5] [--rev HEAD]

On one lab (DelayLink with rtt/2 each way), medians of:

1. What carrying data on a session's stdin costs: `ssh server true` against a
   remote command that reads 1 byte / 7.6 KB from stdin, and against the same
   7.6 KB inside the command line; fresh connection and through a live master.
   sshd opens a session channel with a zero window and only widens it once
   the exec request is processed, so stdin data waits one round trip.
2. One fresh-connection GET through forwards of different kinds of ssh
   connection: `ssh -N -L` (no session ever opened on it) against a
   ControlPersist master that first ran a command, with `-O forward` (what
   nbremote does).
3. Import costs of the nbremote client (in the root namespace, no network):
   python start, `import nbremote.cli`, some of its parts; and the agent's
   start-up run locally (`python -c BOOTSTRAP` with an `ls` request).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))

import delaylink  # noqa: E402
import netlab  # noqa: E402
from netlab import ALICE, LAB_PYTHON  # noqa: E402

PROBE_SRC = (HERE / "probe.py").read_text()


def med_ms(xs):
    return round(statistics.median(xs) * 1000, 1)


def stdin_costs(lab, reps):
    blob = base64.b64encode(os.urandom(6000)).decode()[:7600]
    plain = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "BatchMode=yes", "server"]

    def t(argv, inp=None):
        xs = []
        for _ in range(reps):
            t0 = time.monotonic()
            r = lab.laptop_exec(argv, input=inp)
            xs.append(time.monotonic() - t0)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        return med_ms(xs)

    out = {
        "fresh: ssh server true": t(plain + ["true"]),
        "fresh: 1 byte on stdin": t(plain + ["head -c 1 >/dev/null"], "x"),
        "fresh: 7.6 KB on stdin": t(plain + ["head -c 7600 >/dev/null"], blob),
        "fresh: 7.6 KB in the command line": t(plain + [f"echo {blob} >/dev/null"]),
    }
    mux = ["ssh", "-o", "BatchMode=yes", "-o", "ControlPath=/tmp/nbr-micro-%C"]
    lab.laptop_exec(mux + ["-o", "ControlMaster=auto", "-o", "ControlPersist=yes", "server", "true"])
    out.update(
        {
            "live master: true": t(mux + ["server", "true"]),
            "live master: 7.6 KB on stdin": t(mux + ["server", "head -c 7600 >/dev/null"], blob),
            "live master: 7.6 KB in the command line": t(mux + ["server", f"echo {blob} >/dev/null"]),
        }
    )
    lab.laptop_exec(mux + ["-O", "exit", "server"])
    return out


def forward_costs(lab, reps, tmp):
    small = tmp / "small.bin"
    small.write_bytes(b"x" * 1000)
    os.chmod(small, 0o644)
    procs = []
    try:
        srv = lab.server_popen(
            [str(LAB_PYTHON), "-c", PROBE_SRC, "serve", "18950", str(small)], user=ALICE, stdout=subprocess.PIPE
        )
        procs.append(srv)
        srv.stdout.readline()
        kinds = {
            "ssh -N -L (ControlMaster=no)": (
                [
                    "ssh",
                    "-o",
                    "ControlMaster=no",
                    "-o",
                    "ControlPath=none",
                    "-N",
                    "-L",
                    "127.0.0.1:19001:127.0.0.1:18950",
                    "server",
                ],
                19001,
            ),
            "ssh -N -L as a master (ControlMaster=yes)": (
                [
                    "ssh",
                    "-o",
                    "ControlMaster=yes",
                    "-o",
                    "ControlPath=/tmp/nbr-micro-n-%C",
                    "-N",
                    "-L",
                    "127.0.0.1:19002:127.0.0.1:18950",
                    "server",
                ],
                19002,
            ),
        }
        for argv, _ in kinds.values():
            procs.append(lab.laptop_popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cp = "ControlPath=/tmp/nbr-micro-s-%C"
        lab.laptop_exec(["ssh", "-o", "ControlMaster=auto", "-o", "ControlPersist=yes", "-o", cp, "server", "true"])
        lab.laptop_exec(["ssh", "-o", cp, "-O", "forward", "-L", "127.0.0.1:19003:127.0.0.1:18950", "server"])
        kinds["master that ran a command + -O forward (nbremote's way)"] = (None, 19003)
        w = lab.laptop_exec([str(LAB_PYTHON), "-c", PROBE_SRC, "wait", "127.0.0.1", "19001,19002,19003", "30"])
        if w.returncode != 0:
            raise RuntimeError("forwards did not come up")
        out = {k: [] for k in kinds}
        for _ in range(reps):
            for name, (_, port) in kinds.items():
                r = lab.laptop_exec(
                    [str(LAB_PYTHON), "-c", PROBE_SRC, "gets", "127.0.0.1", str(port), "x", "10"], timeout=120
                )
                out[name].append(json.loads(r.stdout)["seconds"] / 10)
        lab.laptop_exec(["ssh", "-o", cp, "-O", "exit", "server"])
        return {f"one fresh GET through {k}": med_ms(v) for k, v in out.items()}
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except OSError:
                pass


def import_costs(src: Path, reps):
    env = dict(os.environ, PYTHONPATH=str(src))

    def t(argv, inp=None, n=max(reps, 11)):
        xs = []
        for _ in range(n):
            t0 = time.monotonic()
            subprocess.run(argv, input=inp, env=env, capture_output=True, check=True)
            xs.append(time.monotonic() - t0)
        return statistics.median(xs) * 1000

    py = str(LAB_PYTHON)
    base = t([py, "-c", "pass"])
    out = {"python -c pass": round(base, 1)}
    for mod in (
        "click",
        "logging",
        "http.client",
        "webbrowser",
        "nbremote.localnet",
        "nbremote.session",
        "nbremote.cli",
    ):
        out[f"+ import {mod}"] = round(t([py, "-c", f"import {mod}"]) - base, 1)
    out["python -m nbremote --version"] = round(t([py, "-m", "nbremote", "--version"]), 1)
    code = (
        "import sys; sys.path.insert(0, %r); from nbremote import agentlink; "
        "sys.stdout.buffer.write(agentlink.bundle()[0])" % str(src)
    )
    payload = subprocess.run([py, "-c", code], capture_output=True, check=True, env=env).stdout
    argv = json.loads(
        subprocess.run(
            [
                py,
                "-c",
                "import sys, json; sys.path.insert(0, %r); from nbremote import "
                "agentlink; print(json.dumps(agentlink.local_argv()))" % str(src),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    )
    home = Path(tempfile.mkdtemp(prefix="nbr-micro-home-"))
    try:
        req = json.dumps({"id": 1, "op": "ls", "args": {}}).encode() + b"\n"
        env_agent = dict(env, HOME=str(home))
        xs = []
        for _ in range(max(reps, 11)):
            t0 = time.monotonic()
            subprocess.run(argv, input=payload + req, env=env_agent, capture_output=True, check=True)
            xs.append(time.monotonic() - t0)
        out["agent start + ls, run locally"] = med_ms(xs)
        out["agent payload bytes"] = len(payload)
    finally:
        subprocess.run(["rm", "-rf", str(home)])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt", type=float, default=100.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rev", default="HEAD", help="the nbremote commit whose client and agent to time")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbr-micro-"))
    os.chmod(tmp, 0o755)
    lab = None
    try:
        src = tmp / "src-head"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.rev, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
        subprocess.run([str(LAB_PYTHON), "-m", "compileall", "-q", str(src / "src")], check=True)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=12", args.rev], capture_output=True, text=True
        ).stdout.strip()
        result = {"commit": rev, "rtt_ms": args.rtt, "imports_ms": import_costs(src / "src", args.reps)}
        lab = netlab.Lab.build(
            tmp / "lab",
            src_dir=src / "src",
            lock_timeout=900,
            link_factory=functools.partial(delaylink.DelayLink.start, delay_ms=args.rtt / 2),
        )
        result["stdin_ms"] = stdin_costs(lab, args.reps)
        result["forward_ms"] = forward_costs(lab, args.reps, tmp)
        print(json.dumps(result, indent=1))
    finally:
        if lab is not None:
            lab.teardown()
        subprocess.run(["rm", "-rf", str(tmp)])
        # control sockets of the masters above (they died with the lab users)
        for sock in Path("/tmp").glob("nbr-micro-*"):
            if sock.is_socket():
                sock.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
