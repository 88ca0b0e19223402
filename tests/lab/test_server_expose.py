"""`wan-ip`, `expose`, `unexpose` with miniupnpd on a router namespace and a
laptop in a café namespace on the internet side (tests/lab/homenet.py)."""

from __future__ import annotations

import json
import time

import pytest
from homenet import CAFE_ADDR, ECHO_URL, SERVER_LAN2, WAN_ADDR, HomeNet
from serverlab import server_cli

EXTERNAL = 22022


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet"))
    yield built
    built.teardown()


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def cafe_reaches(home, port: int) -> bool:
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({WAN_ADDR!r}, {port}), timeout=1).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    return home.cafe_exec(["python3", "-c", code]).returncode == 0


def test_wan_ip_asks_the_router_and_records_the_answer(lab, home, state):
    first = server_cli(lab, "wan-ip", "--json", state_dir=state)
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["address"] == WAN_ADDR and answer["source"] == "the router (UPnP)"
    assert answer["previous"] is None and answer["changed"] is False
    second = json.loads(server_cli(lab, "wan-ip", "--json", state_dir=state).stdout)
    assert second["previous"] == WAN_ADDR and second["changed"] is False


def test_wan_ip_falls_back_to_an_echo_service_and_reports_a_change(lab, home, state):
    state.mkdir()
    (state / "wan-ip.json").write_text(json.dumps({"address": "11.22.33.99", "at": 1700000000.0}))
    home.stop_miniupnpd()
    try:
        done = server_cli(
            lab,
            "wan-ip",
            "--echo-url",
            "http://11.22.33.10:9/none",
            "--echo-url",
            ECHO_URL,
            "--timeout",
            "1",
            state_dir=state,
        )
    finally:
        home.start_miniupnpd()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == WAN_ADDR
    assert f"WAN address {WAN_ADDR} (from {ECHO_URL})" in done.stderr
    assert "changed: it was 11.22.33.99" in done.stderr


def test_expose_opens_sshd_to_the_cafe_at_the_wan_address_and_unexpose_closes_it(lab, home, state):
    assert not cafe_reaches(home, EXTERNAL)
    done = server_cli(lab, "expose", "--external-port", str(EXTERNAL), "--json", state_dir=state)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["mapped"] and doc["wan_address"] == WAN_ADDR and doc["lan_address"] == SERVER_LAN2
    login = home.cafe_ssh(EXTERNAL, "echo", "$SSH_CONNECTION")
    assert login.returncode == 0, login.stderr
    assert login.stdout.split()[0] == CAFE_ADDR  # the server sees the café's own address
    closed = server_cli(lab, "unexpose", "--external-port", str(EXTERNAL), state_dir=state)
    assert closed.returncode == 0 and f"no longer forwards WAN port {EXTERNAL}" in closed.stderr
    assert not cafe_reaches(home, EXTERNAL)
    assert f"dport {EXTERNAL}" not in home.forwarded_ports()


def test_a_router_that_refuses_the_mapping_is_reported_and_nothing_is_left(lab, home, state):
    done = server_cli(lab, "expose", "--external-port", "80", state_dir=state)
    assert done.returncode == 1
    assert f"the router refused to forward WAN port 80 to {SERVER_LAN2}:22" in done.stderr
    assert "dport 80" not in home.forwarded_ports()


def test_without_a_upnp_router_expose_prints_what_to_enter_by_hand(lab, home, state):
    home.stop_miniupnpd()
    try:
        began = time.monotonic()
        done = server_cli(lab, "expose", "--timeout", "6", state_dir=state)
        took = time.monotonic() - began
    finally:
        home.start_miniupnpd()
    assert done.returncode == 0, done.stderr
    assert "no UPnP router answered" in done.stderr
    # --timeout bounds the whole search, not each of the four device types miniupnpc asks for.
    assert 6 <= took < 6 + 3, took
    assert "protocol TCP · external port 22 · internal IP 192.168.77.2 · internal port 22" in done.stderr
