"""`nbremote forward`: another port of the server's loopback beside Jupyter (TensorBoard's,
here a plain HTTP server of alice's), found, forwarded through the session's master, put back
by the keeper after a real outage on the same local port, and taken away; and the bad inputs
(nothing listening, another user's port, a busy local port) refused with nothing changed."""

from __future__ import annotations

import json
import subprocess
import time

from netlab import ALICE, BOB, LAB_PYTHON, SERVER_HOST_ALIAS

from test_up import up_json, wait_until

GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen('http://127.0.0.1:%s/' % sys.argv[1], timeout=2).status)\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__)"
)


def _get(lab, port: int) -> str:
    return lab.laptop_exec([str(LAB_PYTHON), "-c", GET, str(port)], timeout=30).stdout.strip()


def _listen(lab, user: str, port: int, address: str = "127.0.0.1") -> subprocess.Popen:
    server = lab.server_popen(
        [str(LAB_PYTHON), "-m", "http.server", str(port), "--bind", address],
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)"
    assert wait_until(lambda: lab.server_exec([str(LAB_PYTHON), "-c", probe]).returncode == 0, 20)
    return server


def _forwards(lab) -> list:
    done = lab.nbremote("ls", SERVER_HOST_ALIAS, "--json")
    return json.loads(done.stdout)["servers"][0]["forwards"]


def test_a_port_is_listed_forwarded_kept_through_an_outage_and_removed(lab, lossy_link):
    up_json(lab, SERVER_HOST_ALIAS)  # --detach: the background keeper watches the session
    tensorboard = _listen(lab, ALICE, 6006)
    bobs = _listen(lab, BOB, 6008)
    try:
        listed = lab.nbremote("forward", SERVER_HOST_ALIAS, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["port"]: r for r in json.loads(listed.stdout)["listening"]}
        assert "http.server 6006" in rows[6006]["command"] and rows[6006]["local_port"] is None
        assert 6008 not in rows, "another user's listener is not listed"

        added = lab.nbremote("forward", SERVER_HOST_ALIAS, "6006", "--json")
        assert added.returncode == 0, added.stderr
        forward = json.loads(added.stdout)
        assert forward["local_port"] == 6006 and forward["remote_port"] == 6006
        assert _get(lab, 6006) == "200"
        assert _forwards(lab) == [{"local_port": 6006, "remote_port": 6006}]
        shown = lab.nbremote("status", SERVER_HOST_ALIAS, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["hosts"][0]["servers"][0]["forwards"] == [
            {"local_port": 6006, "remote_port": 6006}
        ]

        # Bad inputs: refused, and the session's forwards are as they were.
        nothing = lab.nbremote("forward", SERVER_HOST_ALIAS, "6007")
        assert nothing.returncode == 1
        assert "nothing listens on port 6007 of server's loopback" in nothing.stderr
        theirs = lab.nbremote("forward", SERVER_HOST_ALIAS, "6008")
        assert theirs.returncode == 1
        assert "port 6008 on server belongs to another user's program" in theirs.stderr
        busy = lab.laptop_popen(
            [str(LAB_PYTHON), "-m", "http.server", "16009", "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert wait_until(lambda: _get(lab, 16009) == "200", 20)
            taken = lab.nbremote("forward", SERVER_HOST_ALIAS, "6006:16009")
            assert taken.returncode == 10 and "local port 16009 is busy" in taken.stderr, taken.stderr
        finally:
            busy.kill()
            busy.wait()
        assert _forwards(lab) == [{"local_port": 6006, "remote_port": 6006}]

        lossy_link.set_down(True)
        time.sleep(8)
        assert _get(lab, 6006) != "200", "the outage did not cut the forward"
        lossy_link.set_down(False)
        back = time.monotonic()
        assert wait_until(lambda: _get(lab, 6006) == "200", 30), "the keeper did not put the forward back"
        print(f"forward on localhost:6006 answered again {time.monotonic() - back:.1f} s after the network returned")

        removed = lab.nbremote("forward", SERVER_HOST_ALIAS, "6006", "--remove")
        assert removed.returncode == 0, removed.stderr
        assert _get(lab, 6006) == "URLError" and _forwards(lab) == []

        again = lab.nbremote("forward", SERVER_HOST_ALIAS, "6006")
        assert again.returncode == 0 and _get(lab, 6006) == "200"
        down = lab.nbremote("down", SERVER_HOST_ALIAS)
        assert down.returncode == 0, down.stderr
        assert _get(lab, 6006) == "URLError"
    finally:
        for server in (tensorboard, bobs):
            server.kill()
            server.wait()


def test_up_forward_adds_the_port_with_the_session(lab):
    tensorboard = _listen(lab, ALICE, 6006)
    try:
        up = lab.nbremote("up", SERVER_HOST_ALIAS, "--no-browser", "--detach", "--forward", "6006:16006", timeout=120)
        assert up.returncode == 0, up.stderr
        assert "localhost:16006 → server:6006" in up.stderr
        assert _get(lab, 16006) == "200"
        assert _forwards(lab) == [{"local_port": 16006, "remote_port": 6006}]
        refused = lab.nbremote("up", SERVER_HOST_ALIAS, "--no-browser", "--detach", "--forward", "70000")
        assert refused.returncode == 2 and "'70000' is not REMOTE_PORT" in refused.stderr
        assert _forwards(lab) == [{"local_port": 16006, "remote_port": 6006}]
    finally:
        lab.nbremote("down", SERVER_HOST_ALIAS)
        tensorboard.kill()
        tensorboard.wait()
