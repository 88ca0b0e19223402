"""Guarantee 1 with `up --socket`: another user cannot even connect.

Jupyter listens on a Unix socket in alice's 0700 state directory, and the
laptop's forward goes to that socket. Bob, on the same server, is refused by
the kernel before Jupyter sees anything; alice's own connection works.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from netlab import ALICE, BOB, LAB_PYTHON

from nbremote.errors import ExitCode

PROBE = (Path(__file__).resolve().parents[1] / "lab" / "jupyter_client_probe.py").read_text()

CONNECT = r"""
import http.client, json, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
try:
    conn = Unix("localhost", timeout=5)
    conn.request("GET", "/api/status")
    print(json.dumps({"status": conn.getresponse().status}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__}))
"""


def test_up_socket_serves_through_the_tunnel_and_no_other_user_can_connect(lab):
    done = lab.nbremote("up", "server", "--socket", "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sock = result["remote_socket"]
    home = lab.user(ALICE).home
    assert result["remote_port"] is None
    assert re.fullmatch(rf"{home}/\.local/state/nbremote/sockets/[0-9a-f]{{16}}\.sock", sock), sock
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock).st_mode) & 0o077 == 0

    token = re.search(r"token=([A-Za-z0-9]+)", result["url"]).group(1)
    probe = lab.laptop_exec(
        [str(LAB_PYTHON), "-", "status", f"http://127.0.0.1:{result['local_port']}", token], input=PROBE, timeout=60
    )
    assert json.loads(probe.stdout) == {"with_token": 200, "without_token": 403}, probe.stderr

    # Alice reaches the socket (and Jupyter wants her token); bob is refused by the kernel.
    as_alice = lab.server_exec(["python3", "-c", CONNECT, sock], user=ALICE)
    assert json.loads(as_alice.stdout) == {"status": 403}, as_alice.stderr
    as_bob = lab.server_exec(["python3", "-c", CONNECT, sock], user=BOB)
    assert json.loads(as_bob.stdout) == {"error": "PermissionError"}, as_bob.stderr

    # Jupyter itself has no TCP listener at all (its kernels keep theirs on loopback).
    server_pid = str(result["pid"])
    tcp = [line for line in lab.server_exec(["ss", "-ltnpH"]).stdout.splitlines() if f"pid={server_pid}," in line]
    assert tcp == [], tcp

    listed = json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"]
    assert [(s["pid"], s["remote_port"], s["local_port"]) for s in listed] == [
        (result["pid"], sock, result["local_port"])
    ]
    again = lab.nbremote("up", "server", "--socket", "--no-browser", "--detach", "--json", timeout=120)
    assert json.loads(again.stdout)["pid"] == result["pid"], again.stderr

    down = lab.nbremote("down", "server", "--json")
    assert json.loads(down.stdout)["stopped"][0]["pid"] == result["pid"], down.stderr
    assert not os.path.exists(sock)


def test_up_socket_refuses_to_move_a_server_that_listens_on_a_port(lab):
    first = lab.nbremote("up", "server", "--no-browser", "--detach", "--json", timeout=120)
    assert first.returncode == 0, first.stderr
    done = lab.nbremote("up", "server", "--socket", "--no-browser", "--detach", timeout=120)
    assert done.returncode == ExitCode.CONFLICT, done.stderr
    assert "listens on a port, not on a Unix socket" in done.stderr
    assert "`nbremote down` and the same --dir" in done.stderr


def test_up_socket_without_a_host_is_a_usage_error(lab):
    done = lab.nbremote("up", "--socket", "--no-browser", "--detach")
    assert done.returncode == 2, done.stderr
    assert "--socket needs a HOST" in done.stderr
    assert not (lab.user("nbr-laptop").home / ".local" / "state" / "nbremote" / "sessions.json").exists()
