"""The Slurm launcher, run on the compute node by the batch script slurm.py writes, as
`python3 -c SOURCE JUPYTER DIR TOKEN_FILE READY [ARGS...]`.

Stdlib only and self-contained: it runs in a Python of its own, where the agent's other modules
are not loaded. It starts Jupyter on the address Slurm knows this node by, on a free port, with
the token read from TOKEN_FILE (never on a command line); once Jupyter answers, it writes node,
address, port and pid to READY (0600, atomically) and then waits for Jupyter, forwarding the
signals Slurm sends.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
ANSWER_POLL = 0.05


def node_address(node: str) -> str:
    """The NodeAddr Slurm knows node by (how the login node reaches it), else its name."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "node", "-o", node],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return node
    return next((word[len("NodeAddr=") :] for word in out.split() if word.startswith("NodeAddr=")), None) or node


def free_port(ip: str) -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port


def jupyter_argv(jupyter: str, root: str, ip: str, port: int, extra: list[str]) -> list[str]:
    return [
        jupyter,
        "--no-browser",
        "--ip=" + ip,
        "--port=%d" % port,
        "--ServerApp.port_retries=0",
        "--ServerApp.root_dir=" + root,
    ] + list(extra)


def answers(ip: str, port: int, token: str) -> bool:
    connection = http.client.HTTPConnection(ip, port, timeout=2)
    try:
        connection.request("GET", "/api/status", headers={"Authorization": "token " + token})
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def write_ready(ready: str, doc: dict[str, object]) -> None:
    tmp = ready + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, ready)


def main(argv: list[str]) -> int:
    jupyter, root, token_file, ready = argv[:4]
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    addr = node_address(node)
    ip = socket.gethostbyname(addr)
    port = free_port(ip)
    env = dict(os.environ)
    env.pop("JUPYTER_TOKEN", None)
    env["JUPYTER_TOKEN_FILE"] = token_file
    print("nbremote: starting Jupyter on %s (%s:%d)" % (node, ip, port), flush=True)
    child = subprocess.Popen(jupyter_argv(jupyter, root, ip, port, argv[4:]), env=env, stdin=subprocess.DEVNULL)
    for number in FORWARDED:
        signal.signal(number, lambda number, _frame: child.send_signal(number))
    with open(token_file) as handle:
        token = handle.read().strip()
    while not answers(ip, port, token):
        if child.poll() is not None:
            return child.returncode
        time.sleep(ANSWER_POLL)
    write_ready(
        ready,
        {
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "node": node,
            "addr": addr,
            "ip": ip,
            "port": port,
            "pid": child.pid,
        },
    )
    while True:
        try:
            return child.wait()
        except InterruptedError:
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
