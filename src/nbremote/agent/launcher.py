"""The Slurm launcher, run on the compute node by the batch script slurm.py writes, as
`python3 -c SOURCE JUPYTER DIR TOKEN_FILE READY NODE_LOGIN [ARGS...]`.

Stdlib only and self-contained: it runs in a Python of its own, where the agent's other modules
are not loaded. It starts Jupyter on a free port, with the token read from TOKEN_FILE (never on
a command line); once Jupyter answers, it writes node, address, port and pid to READY (0600,
atomically) and then waits for Jupyter, forwarding the signals Slurm sends.

Where Jupyter listens depends on whether the laptop can ssh to this node (NODE_LOGIN, the
profile's node_login). With "no", on the address Slurm knows this node by (its NodeAddr), which
the login node reaches. Otherwise the launcher first writes this node's host keys, read from
/etc/ssh here, to the .node file beside READY and waits for the laptop's answer in the .listen
file: "loopback" once the laptop's ssh to this node (through the login node) worked, pinned to
those keys, and Jupyter then listens on 127.0.0.1 only; "node" when the node refused the login
and the profile allows falling back to NodeAddr. With "auto" it asks only where this node's
sshd runs pam_slurm_adopt (the cluster lets a job's owner log in to its node) and it has host
keys to pin; elsewhere it uses NodeAddr at once, as with "no". Jupyter starts after the answer:
it never listens off loopback while the laptop could use the node login.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
ANSWER_POLL = 0.05
LISTEN_POLL = 0.05  # the laptop's answer is a file on the shared home
PAM_SSHD = "/etc/pam.d/sshd"
HOST_KEYS = "/etc/ssh/ssh_host_*_key.pub"
# A public key as known_hosts holds it after the host name: its type and base64 blob.
KEY_LINE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp[0-9]+|sk-[A-Za-z0-9@.-]+) [A-Za-z0-9+/]+={0,2}$")


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


def host_keys(pattern: str = HOST_KEYS) -> list[str]:
    """This node's public host keys as `TYPE BASE64`, read here: the job runs on the node, so
    nothing on the network between the laptop and the node can choose them."""
    keys = []
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path) as handle:
                words = handle.read().split()
        except OSError:
            continue
        line = " ".join(words[:2])
        if KEY_LINE.match(line):
            keys.append(line)
    return keys


def _pam_words(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            return [line.split("#", 1)[0].split() for line in handle]
    except OSError:
        return []


def adopts_logins(pam_file: str = PAM_SSHD) -> bool:
    """Whether this node's sshd runs pam_slurm_adopt: the cluster admits a job's owner to its node.

    The sshd stack and the files it includes, one level down (Debian's `@include NAME`, Red
    Hat's `account include NAME`), are read; a commented-out line does not count."""
    lines = _pam_words(pam_file)
    for words in list(lines):
        name = words[1] if words[:1] == ["@include"] and len(words) == 2 else None
        if len(words) >= 3 and words[1] in ("include", "substack"):
            name = words[2]
        if name and "/" not in name:
            lines += _pam_words(os.path.join(os.path.dirname(pam_file), name))
    return any("pam_slurm_adopt" in word for words in lines for word in words)


def side_file(ready: str, ext: str) -> str:
    """The .node and .listen files beside READY (slurm.py names them the same way)."""
    return ready[: -len(".ready")] + "." + ext if ready.endswith(".ready") else ready + "." + ext


def ask_listen(ready: str, doc: dict[str, object]) -> str:
    """Write this node's keys and wait for the laptop's answer: "loopback" or "node"."""
    listen = side_file(ready, "listen")
    write_ready(side_file(ready, "node"), doc)
    while True:
        try:
            with open(listen) as handle:
                answer = handle.read().strip()
        except OSError:
            answer = ""
        if answer in ("loopback", "node"):
            return answer
        time.sleep(LISTEN_POLL)


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
    jupyter, root, token_file, ready, node_login = argv[:5]
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    addr = node_address(node)
    job_id = os.environ.get("SLURM_JOB_ID")
    keys = host_keys() if node_login != "no" else []
    listen = "node"
    if node_login == "yes" or (node_login == "auto" and keys and adopts_logins()):
        print("nbremote: waiting for the laptop's ssh to %s" % node, flush=True)
        listen = ask_listen(ready, {"job_id": job_id, "node": node, "addr": addr, "host_keys": keys})
    ip = "127.0.0.1" if listen == "loopback" else socket.gethostbyname(addr)
    port = free_port(ip)
    env = dict(os.environ)
    env.pop("JUPYTER_TOKEN", None)
    env["JUPYTER_TOKEN_FILE"] = token_file
    print("nbremote: starting Jupyter on %s (%s:%d)" % (node, ip, port), flush=True)
    child = subprocess.Popen(jupyter_argv(jupyter, root, ip, port, argv[5:]), env=env, stdin=subprocess.DEVNULL)
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
            "job_id": job_id,
            "node": node,
            "addr": addr,
            "ip": ip,
            "port": port,
            "pid": child.pid,
            "listen": listen,
            "host_keys": keys,
        },
    )
    while True:
        try:
            return child.wait()
        except InterruptedError:
            pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
