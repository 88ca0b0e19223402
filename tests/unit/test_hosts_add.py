"""`hosts.add` without a server, in under a second each: its decisions on what the scan of the
addresses found, and what it writes only once everything is settled.

The seams: `confirm` (the trust-on-first-use question), the Console's streams, and the two steps
that reach the server, `sshfiles.scan_all` (ssh-keyscan) and `hosts._install_key` (the key login),
replaced by what a server answered. The lab tests (tests/lab/test_hosts.py) run the same flow
against a real sshd.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from nbremote import hosts, invite, paths, profiles, sshfiles
from nbremote.addresses import Address
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError


def _public(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    kind, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return kind, blob


@pytest.fixture
def world(isolated, tmp_path, monkeypatch):
    """The server's host key, the user's key, and what the scan and the key login answer."""
    host_key = _public(tmp_path / "host_key")
    other_key = _public(tmp_path / "other_key")
    _public(tmp_path / "id")
    answers = {"scans": {}, "installed": False, "install_calls": 0}

    def scan_all(addresses, timeout, key=None):
        answers["scan_key"] = key
        return [answers["scans"].get(a) or sshfiles.Scan(a, [], "Connection refused") for a in addresses]

    def install_key(profile, address, pins, key, timeout, console, wait=None):
        answers["install_calls"] += 1
        return answers["installed"]

    monkeypatch.setattr(sshfiles, "scan_all", scan_all)
    monkeypatch.setattr(hosts, "_install_key", install_key)
    return {"host_key": host_key, "other_key": other_key, "key": tmp_path / "id", "answers": answers}


def _console() -> Console:
    return Console(out=io.StringIO(), err=io.StringIO())


def _files() -> dict[str, bytes]:
    found = {}
    for folder in (paths.config_dir(), sshfiles.ssh_dir()):
        if folder.exists():
            found.update({str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()})
    return found


def _add(world, confirm=lambda _: True, **fields):
    request = hosts.AddRequest(name="gpubox", key=str(world["key"]), **fields)
    return hosts.add(request, _console(), interactive=False, confirm=confirm, timeout=1)


def test_first_use_pins_the_key_it_showed_and_writes_everything(world):
    address = Address("10.0.0.7", 22)
    world["answers"]["scans"][address] = sshfiles.Scan(address, [world["host_key"]])
    asked = []
    result = _add(world, addresses=("10.0.0.7",), user="alice", confirm=lambda q: asked.append(q) or True)
    assert asked == [
        f"gpubox at 10.0.0.7:22 has the ssh-ed25519 key {invite.fingerprint(world['host_key'][1])}. Trust it?"
    ]
    assert result.pinned_from == "first use" and result.reached == address and not result.key_installed
    saved = profiles.load()["gpubox"]
    assert saved.endpoints() == [address] and saved.user == "alice" and saved.key == str(world["key"])
    assert world["host_key"][1] in sshfiles.known_hosts_path().read_text()
    assert sshfiles.include_line() in sshfiles.user_config_path().read_text()


def test_the_scan_logs_in_to_a_relay_with_the_key_add_was_given(world):
    """The host key behind a relay is read through a hop to it: a login there, with --key."""
    address = Address("10.0.0.7", 22)
    world["answers"]["scans"][address] = sshfiles.Scan(address, [world["host_key"]])
    _add(world, addresses=("10.0.0.7",))
    assert world["answers"]["scan_key"] == str(world["key"])


def test_a_key_not_trusted_changes_nothing(world):
    address = Address("10.0.0.7", 22)
    world["answers"]["scans"][address] = sshfiles.Scan(address, [world["host_key"]])
    before = _files()
    with pytest.raises(NbremoteError) as caught:
        _add(world, addresses=("10.0.0.7",), confirm=lambda _: False)
    assert caught.value.message == "nothing changed (host key not trusted)"
    assert caught.value.exit_code == ExitCode.HOST_KEY
    assert _files() == before and world["answers"]["install_calls"] == 0


def test_an_invite_whose_key_the_server_does_not_show_is_refused_and_changes_nothing(world):
    address = Address("10.0.0.7", 2222)
    world["answers"]["scans"][address] = sshfiles.Scan(address, [world["other_key"]])
    text = invite.render(invite.Invite("alice", ("10.0.0.7",), 2222, invite.fingerprint(world["host_key"][1])))
    before = _files()
    with pytest.raises(NbremoteError) as caught:
        _add(world, invite=text)
    assert caught.value.message == "the host key of gpubox at 10.0.0.7:2222 does not match the invite: refusing"
    assert caught.value.exit_code == ExitCode.HOST_KEY
    assert _files() == before and world["answers"]["install_calls"] == 0


def test_addresses_showing_different_keys_are_refused(world):
    first, second = Address("10.0.0.7", 22), Address("192.0.2.9", 22)
    world["answers"]["scans"][first] = sshfiles.Scan(first, [world["host_key"]])
    world["answers"]["scans"][second] = sshfiles.Scan(second, [world["other_key"]])
    before = _files()
    with pytest.raises(NbremoteError) as caught:
        _add(world, addresses=("10.0.0.7", "192.0.2.9"))
    assert caught.value.message == "the addresses of gpubox are not the same server: refusing"
    assert _files() == before


def test_no_address_answering_lists_each_and_changes_nothing(world):
    before = _files()
    with pytest.raises(NbremoteError) as caught:
        _add(world, addresses=("10.0.0.7", "192.0.2.9:2200"))
    assert caught.value.message == "cannot reach gpubox"
    assert caught.value.details == ["tried 10.0.0.7:22 (Connection refused), 192.0.2.9:2200 (Connection refused)"]
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert _files() == before


def test_a_key_that_had_to_be_installed_is_reported(world):
    address = Address("10.0.0.7", 22)
    world["answers"]["scans"][address] = sshfiles.Scan(address, [world["host_key"]])
    world["answers"]["installed"] = True
    result = _add(world, addresses=("10.0.0.7",))
    assert result.key_installed and world["answers"]["install_calls"] == 1
    assert "gpubox" in profiles.load()
