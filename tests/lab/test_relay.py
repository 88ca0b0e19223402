"""`server relay` and a laptop in the café reaching the box through it (issue 13, part 4).

The router forwards nothing and its UPnP is off: the box is as unreachable from
the internet as behind carrier-grade NAT. The relay is a namespace on the
internet side running Debian's sshd with a config of its own, bob's account
standing for the user's account on a VPS. The box (as alice) keeps the reverse
tunnel; the laptop, in the café, adds the box from the invite and runs `up`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from homenet import RELAY_ADDR, HomeNet
from netlab import ALICE, BOB, LAB_PYTHON, LAPTOP_USER

TUNNEL = 2222
RELAY = f"{BOB}@{RELAY_ADDR}"


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet-relay"))
    built.stop_miniupnpd()
    built.add_relay(BOB)
    yield built
    built.teardown()


def alice_key(lab) -> str:
    """A key of alice's on the box (her ~/.ssh goes back after the test), its public line."""
    key = lab.user(ALICE).home / ".ssh" / "id_ed25519"
    if not key.exists():
        done = lab.server_exec(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], user=ALICE)
        assert done.returncode == 0, done.stderr
    return Path(f"{key}.pub").read_text()


def laptop_key(lab) -> str:
    return (lab.user(LAPTOP_USER).home / ".ssh" / "id_ed25519.pub").read_text()


@pytest.fixture(autouse=True)
def no_profiles(lab):
    yield
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


@pytest.fixture
def box_state(lab):
    """alice's server state (relay.json): her default folder, removed after the test."""
    folder = lab.user(ALICE).home / ".local" / "state" / "nbremote-server"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def box_cli(lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.server_exec(
        [str(LAB_PYTHON), "-m", "nbremote", "server", *args], user=ALICE, env=lab.nbremote_env(), timeout=timeout
    )


def start_relay(lab, home, log: Path) -> subprocess.Popen:
    proc = lab.server_popen(
        [str(LAB_PYTHON), "-m", "nbremote", "server", "relay", RELAY, "--tunnel-port", str(TUNNEL), "--port", "22"],
        user=ALICE,
        env=lab.nbremote_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    # Listening on the relay comes a moment before the record is written: wait for both.
    record = lab.user(ALICE).home / ".local" / "state" / "nbremote-server" / "relay.json"
    deadline = time.monotonic() + 20
    while not (home.relay_listens(TUNNEL) and record.exists()):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def cafe_nbremote(lab, home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return home.cafe_laptop(lab.nbremote_argv(*args), env=lab.nbremote_env(), timeout=timeout)


def tunnel_ssh_pids(lab) -> list[int]:
    """The box's `ssh -R` to the relay, by its forward (the box's namespace holds only lab processes)."""
    done = lab.server_exec(["pgrep", "-u", ALICE, "-f", "--", f"-R 127.0.0.1:{TUNNEL}:"])
    return [int(p) for p in done.stdout.split()]


def wait_for(predicate, seconds: float) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < seconds
        time.sleep(0.05)
    return time.monotonic() - began


def add_from_invite(lab, home) -> str:
    invite = box_cli(lab, "invite", "--port", "22", "--json")
    assert invite.returncode == 0, invite.stderr
    doc = json.loads(invite.stdout)
    assert doc["relay"] == RELAY and doc["tunnel"] == TUNNEL
    assert doc["invite"].endswith(f",relay={RELAY},tunnel={TUNNEL}")
    added = cafe_nbremote(lab, home, "add", "box", "--invite", doc["invite"], "--json")
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert result["pinned_from"] == "invite"
    assert result["reached"] == f"127.0.0.1:{TUNNEL} via {RELAY}"
    return doc["invite"]


def test_from_the_cafe_add_and_up_go_through_the_relay_and_survive_its_drops(lab, home, box_state, tmp_path):
    home.authorize_on_relay(BOB, [alice_key(lab), laptop_key(lab)])
    relay = start_relay(lab, home, tmp_path / "relay.log")
    try:
        add_from_invite(lab, home)
        hosts = json.loads(cafe_nbremote(lab, home, "hosts", "--json").stdout)["hosts"][0]
        assert hosts["relay"] == {"relay": RELAY, "tunnel": TUNNEL}

        up = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach")
        assert up.returncode == 0, up.stderr
        assert f"connected to box via relay 127.0.0.1:{TUNNEL} via {RELAY}" in up.stderr
        host = json.loads(cafe_nbremote(lab, home, "hosts", "--json").stdout)["hosts"][0]
        assert host["last_path"]["kind"] == "relay"
        relay_way = f"127.0.0.1:{TUNNEL} via {RELAY}"
        assert isinstance(host["answered"].pop(relay_way), float)
        assert set(host["answered"].values()) == {None}  # the LAN addresses never answered in the café
        assert host["ways"][-1]["kind"] == "relay" and {w["kind"] for w in host["ways"][:-1]} == {"LAN"}
        assert cafe_nbremote(lab, home, "down", "box").returncode == 0

        # The box's tunnel killed: the relay command builds it again.
        for pid in tunnel_ssh_pids(lab):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not home.relay_listens(TUNNEL), 10)
        wait_for(lambda: home.relay_listens(TUNNEL), 10)
        again = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach", "--json")
        assert again.returncode == 0, again.stderr + (tmp_path / "relay.log").read_text()
        assert cafe_nbremote(lab, home, "down", "box").returncode == 0

        # The relay's sshd restarted, sessions and all.
        home.stop_relay_sshd()
        home.start_relay_sshd()
        wait_for(lambda: home.relay_listens(TUNNEL), 10)
        again = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach", "--json")
        assert again.returncode == 0, again.stderr + (tmp_path / "relay.log").read_text()
        assert "tunnel rebuilt after" in (tmp_path / "relay.log").read_text()
    finally:
        stop(relay)


def test_server_check_offers_the_relay_when_the_internet_sees_another_address(lab, home, tmp_path):
    from serverlab import server_cli

    state = tmp_path / "state"
    state.mkdir()
    # What `server wan-ip` records when an echo service sees the provider's NAT, not the router.
    (state / "wan-ip.json").write_text(
        json.dumps({"address": "11.22.33.99", "source": "http://11.22.33.10/ip", "at": 1700000000.0})
    )
    home.start_miniupnpd()
    try:
        done = server_cli(lab, "check", "--json", state_dir=state)
    finally:
        home.stop_miniupnpd()
    rows = {row["name"]: row for row in json.loads(done.stdout)["checks"]}
    row = rows["reachable from the internet"]
    assert row["status"] == "warn"
    assert row["detail"] == (
        "the router's WAN address is 11.22.33.1 but the internet sees 11.22.33.99 "
        "(http://11.22.33.10/ip): a NAT is in front of the router"
    )
    assert row["fix"].startswith("nbremote server relay USER@HOST")


def test_a_relay_that_refuses_the_box_key_is_a_clear_error_and_nothing_is_recorded(lab, home, box_state):
    home.authorize_on_relay(BOB, [laptop_key(lab)])
    alice_key(lab)
    done = box_cli(lab, "relay", RELAY, "--tunnel-port", str(TUNNEL), "--port", "22", "--once")
    assert done.returncode == 4, done.stderr  # AUTH_FAILED
    assert f"the relay {RELAY}:22 refused the key" in done.stderr
    assert "authorized_keys of nbr-bob" in done.stderr
    assert not (box_state / "relay.json").exists()
    assert not home.relay_listens(TUNNEL)


def test_a_port_taken_on_the_relay_is_a_clear_error_and_the_record_stays(lab, home, box_state, tmp_path):
    home.authorize_on_relay(BOB, [alice_key(lab), laptop_key(lab)])
    relay = start_relay(lab, home, tmp_path / "relay.log")
    try:
        record = (box_state / "relay.json").read_bytes()
        done = box_cli(lab, "relay", f"{BOB}@{RELAY_ADDR}:22", "--tunnel-port", str(TUNNEL), "--port", "22", "--once")
        assert done.returncode == 10, done.stderr  # PORT_BUSY
        assert f"port {TUNNEL} is already taken on the relay {RELAY_ADDR}" in done.stderr
        assert (box_state / "relay.json").read_bytes() == record
        assert relay.poll() is None and home.relay_listens(TUNNEL)  # the working tunnel is untouched
    finally:
        stop(relay)


def test_the_laptop_names_the_relay_when_it_refuses_the_laptop_or_no_tunnel_runs(lab, home, box_state, tmp_path):
    home.authorize_on_relay(BOB, [alice_key(lab), laptop_key(lab)])
    relay = start_relay(lab, home, tmp_path / "relay.log")
    try:
        add_from_invite(lab, home)
    finally:
        stop(relay)
    wait_for(lambda: not home.relay_listens(TUNNEL), 10)
    profile = (lab.user(LAPTOP_USER).home / ".config" / "nbremote" / "hosts.toml").read_bytes()

    done = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach", "--json")
    assert done.returncode == 3, done.stderr  # UNREACHABLE
    assert f"nothing answers on the relay's port {TUNNEL}" in done.stderr, done.stderr
    assert "`nbremote server relay` runs there" in done.stderr
    assert "never answered" in done.stderr  # `add` logged in, `up` never did

    home.authorize_on_relay(BOB, [alice_key(lab)])
    done = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach", "--json")
    assert done.returncode == 3, done.stderr
    assert f"the relay {RELAY_ADDR} refused {BOB}'s key" in done.stderr
    assert (lab.user(LAPTOP_USER).home / ".config" / "nbremote" / "hosts.toml").read_bytes() == profile
