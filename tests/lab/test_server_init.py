"""`nbremote server init --yes` on a fresh server behind a UPnP router, then the
laptop in the café uses what it printed: the whole recipe in two commands.
(`nbremote add --invite` belongs to another issue: the test pins the host key
from the invite's fingerprint itself, which is what `add` does.)"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from homenet import ECHO_URL, WAN_ADDR, HomeNet
from netlab import ALICE, SERVER_ADDR
from serverlab import private_etc, server_cli

from nbremote import invite


@pytest.fixture
def home(lab, tmp_path):
    built = HomeNet.build(lab, tmp_path / "homenet")
    with private_etc(lab, tmp_path):
        yield built
        # Back to port 22 through nbremote itself, so the lab's own cleanup has nothing to reload.
        server_cli(lab, "restore", state_dir=tmp_path / "s")
    lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])
    built.teardown()


def test_init_then_up_from_the_cafe(lab, home, tmp_path):
    done = server_cli(
        lab, "init", "--yes", "--allow-user", ALICE, "--echo-url", ECHO_URL, state_dir=tmp_path / "s", timeout=120
    )
    assert done.returncode == 0, done.stderr
    line = re.search(r"--invite (\S+)", done.stdout).group(1)
    parsed = invite.parse(line)
    assert parsed.user == ALICE and parsed.port == 22222
    assert parsed.hosts[0] == SERVER_ADDR and parsed.hosts[-1] == WAN_ADDR
    fingerprint = lab.server_exec(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "/etc/ssh/ssh_host_ed25519_key.pub"]
    ).stdout.split()[1]
    assert parsed.fingerprint == fingerprint
    for expected in (
        "sshd config validated and backed up",
        "a fresh key login on port 22222 works",
        "allow 22222/tcp, drop other inbound",
        f"router forwards {WAN_ADDR}:22222",
    ):
        assert expected in done.stderr

    # What `nbremote add --invite` will do: take the key only if its fingerprint matches.
    scanned = home.cafe_laptop(["ssh-keyscan", "-t", "ed25519", "-p", "22222", WAN_ADDR]).stdout
    key_line = next(line for line in scanned.splitlines() if "ssh-ed25519" in line)
    blob = base64.b64decode(key_line.split()[2])
    assert "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=") == parsed.fingerprint
    home.cafe_laptop(["sh", "-c", f"echo '{key_line}' >> ~/.ssh/known_hosts"])
    target = f"ssh://{ALICE}@{WAN_ADDR}:22222"
    up = home.cafe_laptop(
        [str(lab.nbremote_argv()[0]), "-m", "nbremote", "up", target, "--no-browser", "--detach", "--json"],
        env=lab.nbremote_env(),
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["url"].startswith("http://127.0.0.1:")
    down = home.cafe_laptop(
        [str(lab.nbremote_argv()[0]), "-m", "nbremote", "down", target], env=lab.nbremote_env(), timeout=60
    )
    assert down.returncode == 0, down.stderr
