"""The pure parts of the two-command onboarding: the wait's drop-in, its networks, the invite's token,
and the laptop's reading of a refused password login."""

from __future__ import annotations

import ast
import base64
import json
import time
import subprocess
from pathlib import Path

import pytest

from nbremote import hosts, invite
from nbremote.addresses import Address
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import Profile
from nbremote.server import onboard

FINGERPRINT = "SHA256:" + "A" * 43
SRC = Path(__file__).resolve().parents[2] / "src" / "nbremote"


def test_passwords_only_from_private_networks_and_never_a_public_ipv4_one():
    assert onboard.private_networks(["192.168.1.0/24", "11.22.33.0/24", "10.8.0.0/16", "2001:db8:1::/64"]) == [
        "192.168.1.0/24",
        "10.8.0.0/16",
        "2001:db8:1::/64",
    ]
    assert onboard.private_networks(["11.22.33.0/24"]) == []


def test_the_wait_drop_in_turns_passwords_off_except_for_the_user_from_the_lan():
    text = onboard.waiting_dropin(("alice",), ["192.168.1.0/24"])
    lines = text.splitlines()
    assert lines[0].startswith("# Written by nbremote")
    assert lines[2:] == [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "Match User alice Address 127.0.0.0/8,::1,192.168.1.0/24",
        "\tPasswordAuthentication yes",
    ]


def test_the_outside_address_is_in_none_of_the_networks():
    assert onboard.outside_address(["198.51.100.0/24"]) == "203.0.113.9"
    assert onboard.outside_address(["192.168.1.0/24"]) == "198.51.100.7"


def test_an_invite_with_a_wait_token_round_trips_and_a_bad_one_is_refused():
    made = invite.Invite(user="alice", hosts=("192.168.1.5",), port=22, fingerprint=FINGERPRINT, wait="0123456789ab")
    line = invite.render(made)
    assert line.endswith("#wait=0123456789ab")
    assert invite.parse(line) == made
    assert invite.parse(line.rsplit("#", 1)[0]).wait is None
    with pytest.raises(NbremoteError, match="not the token of a waiting"):
        invite.parse(line[:-1])
    with pytest.raises(NbremoteError, match="is not an nbremote invite"):
        invite.parse(line.replace("#wait=", "#later="))


PROFILE = Profile(name="gpubox", addresses=(Address("192.168.1.5", 22),), user="alice")


@pytest.mark.parametrize(
    "stderr, message",
    [
        (
            "Permission denied, please try again.\nalice@192.168.1.5: Permission denied (publickey,password).\n",
            "wrong password for alice on gpubox",
        ),
        ("alice@11.22.33.1: Permission denied (publickey).\n", "gpubox takes no password from this laptop"),
    ],
)
def test_a_refused_password_login_says_which_refusal_it_was(stderr, message):
    error = hosts._password_refused(PROFILE, stderr)
    assert error.message == message and error.exit_code == ExitCode.AUTH_FAILED


def test_other_ssh_failures_are_not_read_as_a_refused_password():
    assert hosts._password_refused(PROFILE, "ssh: connect to host 192.168.1.5 port 22: No route to host") is None


@pytest.mark.parametrize("script", [hosts.JOIN_CHECK, hosts.JOIN_AND_WAIT, onboard.USER_FILE])
def test_the_scripts_run_on_the_server_are_python(script):
    ast.parse(script)


def test_the_join_check_lets_the_key_in_only_for_the_waiting_token(tmp_path):
    folder = tmp_path / ".local/state/nbremote"
    folder.mkdir(parents=True)

    def check(token: str) -> int:
        return subprocess.run(["python3", "-c", hosts.JOIN_CHECK, token], env={"HOME": str(tmp_path)}).returncode

    assert check("0123456789ab") == hosts.NOT_WAITING  # no record
    (folder / onboard.RECORD).write_text('{"state": "waiting", "token": "0123456789ab", "beat": %f}' % time.time())
    assert check("0123456789ab") == 0
    assert check("ba9876543210") == hosts.NOT_WAITING
    (folder / onboard.RECORD).write_text('{"state": "waiting", "token": "0123456789ab", "beat": 0}')
    assert check("0123456789ab") == hosts.NOT_WAITING  # its init was killed
    (folder / onboard.RECORD).write_text('{"state": "finishing", "token": "0123456789ab", "beat": %f}' % time.time())
    assert check("0123456789ab") == hosts.MOVED_ON  # a second laptop, after the first one's key login
    assert check("ba9876543210") == hosts.NOT_WAITING


def test_the_join_marks_the_key_login_and_prints_the_final_record(tmp_path):
    folder = tmp_path / ".local/state/nbremote"
    folder.mkdir(parents=True)
    (folder / onboard.RECORD).write_text('{"state": "done", "token": "0123456789ab", "port": 22222}')
    done = subprocess.run(
        ["python3", "-c", hosts.JOIN_AND_WAIT, "0123456789ab", "5"],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "SSH_CLIENT": "192.168.1.10 50000 22"},
    )
    assert '"port": 22222' in done.stdout
    assert not (folder / onboard.JOINED).exists()  # only a waiting init is told
    (folder / onboard.RECORD).write_text('{"state": "waiting", "token": "0123456789ab", "beat": %f}' % time.time())
    done = subprocess.run(
        ["python3", "-c", hosts.JOIN_AND_WAIT, "0123456789ab", "0.5"],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "SSH_CLIENT": "192.168.1.10 50000 22"},
    )
    assert '"state": "waiting"' in done.stdout
    assert '"from": "192.168.1.10"' in (folder / onboard.JOINED).read_text()


def test_server_cli_and_invite_cmd_do_not_import_each_other():
    for name in ("invite_cmd.py", "steps.py", "onboard.py"):
        tree = ast.parse((SRC / "server" / name).read_text())
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module in ("nbremote.server", "nbremote.server.cli")
            for alias in node.names
        }
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "cli" not in imported and "nbremote.server.cli" not in imported, name


HOST_KEY = "ssh-ed25519 " + base64.b64encode(b"k" * 51).decode() + " root@gpubox\n"


def test_init_invites_through_the_relay_the_box_keeps_a_tunnel_to(monkeypatch, tmp_path):
    monkeypatch.setenv("NBREMOTE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(onboard.netinfo, "lan_addresses", lambda: ["192.168.1.5"])
    plain = invite.parse(onboard.invite_line("alice", HOST_KEY, 22222, wan="11.22.33.1"))
    assert plain.relay is None and plain.hosts == ("192.168.1.5", "11.22.33.1")
    (tmp_path / "relay.json").write_text(json.dumps({"relay": "bob@vps.example.org:2022", "tunnel": 2222, "at": 1}))
    final = invite.parse(onboard.invite_line("alice", HOST_KEY, 22222, wan=None))
    assert (str(final.relay), final.tunnel_port, final.wait) == ("bob@vps.example.org:2022", 2222, None)
    waiting = invite.parse(onboard.invite_line("alice", HOST_KEY, 22, wan=None, wait="0123456789ab"))
    assert (str(waiting.relay), waiting.tunnel_port, waiting.wait) == ("bob@vps.example.org:2022", 2222, "0123456789ab")
