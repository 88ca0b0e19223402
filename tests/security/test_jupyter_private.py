"""Guarantee 1: no one but the user reaches their Jupyter.

A second account on the lab server (nbr-bob) tries everything an ordinary user
can: connect to Jupyter's port without the token, read every file of alice's
it can open, every process's command line and environment, tmux. Alice's home
is made world-readable for these tests (0755, as on many servers), so only
nbremote's own permissions stand between bob and the token.
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
from netlab import ALICE, BOB

PROBE_AS_BOB = r"""
import http.client, json, sys
port, token = int(sys.argv[1]), sys.argv[2]
out = {}
for path in ("/api/status", "/api/kernels", "/api/contents"):
    for name, headers in (("none", {}), ("wrong", {"Authorization": "token " + "0" * len(token)})):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path, headers=headers)
        out[path + " " + name] = conn.getresponse().status
        conn.close()
print(json.dumps(out))
"""

# Everything bob can read that might hold the token: files under alice's home and
# the shared temporary directories, and every process's command line and environment.
# The token comes on stdin: on the command line the search would find itself.
SEARCH_AS_BOB = r"""
import json, os, sys
token = sys.stdin.read().strip().encode()
found, read = [], 0
for root in sys.argv[1:]:
    for folder, dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as handle:
                    data = handle.read(1 << 20)
            except OSError:
                continue
            read += 1
            if token in data:
                found.append(path)
for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("cmdline", "environ"):
        try:
            with open("/proc/%s/%s" % (pid, part), "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        read += 1
        if token in data:
            found.append("/proc/%s/%s" % (pid, part))
print(json.dumps({"found": found, "read": read}))
"""


@pytest.fixture
def open_home(lab):
    home = lab.user(ALICE).home
    before = stat.S_IMODE(home.stat().st_mode)
    os.chmod(home, 0o755)
    yield home
    os.chmod(home, before)


def up_json(lab, *args: str) -> dict:
    done = lab.nbremote("up", "server", *args, "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def token_of(url: str) -> str:
    return re.search(r"token=([A-Za-z0-9]+)", url).group(1)


def test_another_user_cannot_use_the_port_without_the_token(lab):
    result = up_json(lab)
    token = token_of(result["url"])
    done = lab.server_exec(["python3", "-c", PROBE_AS_BOB, str(result["remote_port"]), token], user=BOB)
    assert done.returncode == 0, done.stderr
    statuses = json.loads(done.stdout)
    assert set(statuses.values()) == {403}, statuses


def test_another_user_cannot_learn_the_token(lab, open_home):
    result = up_json(lab)
    token = token_of(result["url"])
    # The token really is on disk in alice's files (the state record, the token file
    # Jupyter reads, and Jupyter's own log prints its URL): the search below can find it.
    as_alice = lab.server_exec(["python3", "-c", SEARCH_AS_BOB, str(open_home)], user=ALICE, input=token)
    holders = json.loads(as_alice.stdout)["found"]
    assert any("/.local/state/nbremote/tokens/" in p for p in holders), holders
    assert any("/.local/state/nbremote/servers/" in p for p in holders), holders

    done = lab.server_exec(
        ["python3", "-c", SEARCH_AS_BOB, str(open_home), "/tmp", "/var/tmp", "/dev/shm"],
        user=BOB,
        input=token,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["found"] == [] and seen["read"] > 10, seen

    # tmux: alice's server socket is in a 0700 directory; bob gets no answer from it.
    tmux = lab.server_exec(
        ["tmux", "-S", f"/tmp/tmux-{lab.user(ALICE).uid}/default", "list-panes", "-a", "-F", "#{pane_start_command}"],
        user=BOB,
    )
    assert tmux.returncode != 0 and token not in tmux.stdout + tmux.stderr
    own = lab.server_exec(["tmux", "list-panes", "-a", "-F", "#{pane_start_command}"], user=ALICE).stdout
    assert "jupyter-lab" in own and token not in own


def test_runtime_and_state_files_are_private(lab):
    up_json(lab)
    home = lab.user(ALICE).home
    state = home / ".local" / "state" / "nbremote"
    runtime = home / ".local" / "share" / "jupyter" / "runtime"
    checked = []
    for root in (state, runtime):
        assert stat.S_IMODE(root.stat().st_mode) == 0o700, root
        for folder, dirs, files in os.walk(root):
            for name in dirs:
                path = os.path.join(folder, name)
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
                checked.append(path)
            for name in files:
                path = os.path.join(folder, name)
                assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
                checked.append(path)
    names = {os.path.basename(p) for p in checked}
    assert {"servers", "tokens", "logs"} <= names
    assert any(re.fullmatch(r"jpserver-\d+\.json", n) for n in names), names
    # The tmux socket's directory too: a socket there would answer anyone who can reach it.
    tmux_dir = f"/tmp/tmux-{lab.user(ALICE).uid}"
    assert stat.S_IMODE(os.stat(tmux_dir).st_mode) == 0o700


def test_nothing_of_ours_listens_beyond_loopback(lab):
    """The same check as tests/lab/test_up.py, with a notebook UI and a second directory too."""
    lab.server_exec(["mkdir", "-p", "/home/nbr-alice/other"], user=ALICE)
    up_json(lab)
    up_json(lab, "--notebook", "--dir", "other")
    uid = lab.user(ALICE).uid
    ours = []
    for line in lab.server_exec(["ss", "-ltnupH"]).stdout.splitlines():
        for pid in re.findall(r"pid=(\d+)", line):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                ours.append(line.split()[4])
    assert len(ours) >= 2, ours
    assert all(addr.startswith(("127.0.0.1:", "[::1]:")) for addr in ours), ours
