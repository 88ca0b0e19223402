"""IPv6 (issue 13, part 3): the box's global address in the invite and in the agent's hello
(a profile made at home learns it), `server expose` opening a pinhole in the router's IPv6
firewall (UPnP IGD v2, miniupnpd) to sshd and `--keep` renewing it, and `server check`
saying whether ssh comes in over IPv6.

The home of tests/lab/homenet.py with ipv6=True: routed IPv6, no NAT66, the
router dropping new inbound IPv6 unless a pinhole lets it in. The café has no
way in over IPv4 at all (as behind a provider's carrier-grade NAT), so what
reaches the box from there is IPv6 through the pinhole, or nothing.
miniupnpd opens pinholes only to ports of 1024 and up: sshd listens on 22222
here, as `server harden` moves it. The box runs `server firewall` (nftables) first,
as `server init` does: it must let ssh in over IPv6 as over IPv4, and let the
router's answers to expose's search for its pinhole service in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from homenet import SERVER_V6, HomeNet
from netlab import ALICE, LAB_PYTHON, LAPTOP_USER
from serverlab import private_etc, server_cli
from test_wan_change import leave_home

PORT = 22222


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet-v6"), ipv6=True)
    built.ipv4_from_internet(False)
    yield built
    built.teardown()


@pytest.fixture
def sshd_high(lab):
    """sshd on PORT instead of 22 (the lab puts /etc/ssh back after each test)."""
    (lab.server_etc_ssh / "sshd_config.d" / "50-nbrtest-port.conf").write_text(f"Port {PORT}\n")
    lab.reload_sshd()
    deadline = time.monotonic() + 10
    while f"[::]:{PORT}" not in lab.server_exec(["ss", "-Htln"]).stdout:
        assert time.monotonic() < deadline, "sshd did not move to the high port"
        time.sleep(0.05)


@pytest.fixture
def box_firewall(lab, tmp_path):
    """The box's /etc a private copy (nftables.conf is written there); our table gone after."""
    with private_etc(lab, tmp_path):
        yield
    lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


@pytest.fixture(autouse=True)
def no_profiles(lab):
    yield
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


def cafe_reaches(home, address: str, port: int) -> bool:
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({address!r}, {port}), timeout=1).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    return home.cafe_exec(["python3", "-c", code]).returncode == 0


def cafe_nbremote(lab, home, *args: str, timeout: float = 120):
    return home.cafe_laptop(lab.nbremote_argv(*args), env=lab.nbremote_env(), timeout=timeout)


def invite(lab) -> dict:
    done = lab.server_exec(
        [str(LAB_PYTHON), "-m", "nbremote", "server", "invite", "--port", str(PORT), "--json"],
        user=ALICE,
        env=lab.nbremote_env(),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_cafe_reaches_the_box_over_ipv6_only_once_expose_opened_the_pinhole(
    lab, home, sshd_high, box_firewall, state
):
    firewall = server_cli(lab, "firewall", "--yes", state_dir=state)
    assert firewall.returncode == 0, firewall.stderr
    assert f"allow {PORT}/tcp, drop other inbound (table inet nbremote" in firewall.stderr
    assert not cafe_reaches(home, SERVER_V6, PORT)  # the router drops new inbound IPv6

    doc = invite(lab)
    # The global IPv6 address after the LAN ones, bracketed in the line.
    assert doc["addresses"][-1] == SERVER_V6 and doc["addresses"][0] == "192.168.77.2"
    assert f",[{SERVER_V6}]:{PORT}#SHA256:" in doc["invite"]

    done = server_cli(lab, "expose", "--json", state_dir=state)
    assert done.returncode == 0, done.stderr
    exposed = json.loads(done.stdout)
    assert exposed["pinholes"] == [
        {"address": SERVER_V6, "port": PORT, "opened": True, "id": exposed["pinholes"][0]["id"], "lease": 86400}
    ]
    assert len(home.pinholes(SERVER_V6)) == 1, home.forward_chain()
    assert cafe_reaches(home, SERVER_V6, PORT)
    assert not cafe_reaches(home, "11.22.33.1", PORT)  # the IPv4 forward leads nowhere from the café
    pinhole = exposed["pinholes"][0]["id"]
    assert ipv6_rows(lab, state) == [
        ("ipv6 address", "pass", f"{SERVER_V6} (eth1)"),
        ("ipv6 firewall", "pass", f"nftables: allow {PORT}/tcp over IPv6 as over IPv4"),
        ("ipv6 pinhole", "pass", f"pinhole {pinhole} lets in [{SERVER_V6}]:{PORT}"),
    ]

    added = cafe_nbremote(lab, home, "add", "box", "--invite", doc["invite"], "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["reached"] == f"[{SERVER_V6}]:{PORT}"
    up = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach")
    assert up.returncode == 0, up.stderr
    assert f"connected to box via IPv6 [{SERVER_V6}]:{PORT}" in up.stderr
    assert cafe_nbremote(lab, home, "down", "box").returncode == 0

    closed = server_cli(lab, "unexpose", state_dir=state)
    assert closed.returncode == 0, closed.stderr
    assert f"router's IPv6 firewall no longer lets in [{SERVER_V6}]:{PORT}" in closed.stderr
    assert home.pinholes(SERVER_V6) == [], home.forward_chain()
    assert not cafe_reaches(home, SERVER_V6, PORT)
    assert not (state / "pinholes.json").exists()
    assert ipv6_rows(lab, state)[2] == (
        "ipv6 pinhole",
        "warn",
        f"no pinhole to [{SERVER_V6}]:{PORT} in the router's IPv6 firewall",
    )


def ipv6_rows(lab, state) -> list[tuple[str, str, str]]:
    """`server check`'s IPv6 rows, as (name, status, detail)."""
    done = server_cli(lab, "check", "--json", "--timeout", "1", state_dir=state)
    rows = json.loads(done.stdout)["checks"]
    return [(r["name"], r["status"], r["detail"]) for r in rows if r["name"].startswith("ipv6")]


def test_expose_keep_renews_the_pinhole_past_its_lease_and_opens_it_again_once_it_lapsed(
    lab, home, sshd_high, state, tmp_path
):
    """A pinhole always has a lease (a day at most): `expose --keep` renews it (UpdatePinhole)
    at half of it; one that lapsed meanwhile (the box asleep, the router restarted) is opened
    again at the next renewal."""
    log = tmp_path / "expose.log"
    keep = lab.server_popen(
        [str(LAB_PYTHON), "-m", "nbremote", "server", "expose", "--keep", "--lease", "4", "--timeout", "1"],
        env=lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state)}),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_for(lambda: len(home.pinholes(SERVER_V6)) == 1, 20), log.read_text()
        time.sleep(9)  # more than two leases
        assert len(home.pinholes(SERVER_V6)) == 1, log.read_text() + home.forward_chain()
        assert cafe_reaches(home, SERVER_V6, PORT)
        assert "opened again" not in log.read_text()  # renewed, the same pinhole all along

        os.killpg(keep.pid, signal.SIGSTOP)  # nothing renews: the router lets the lease run out
        try:
            assert wait_for(lambda: home.pinholes(SERVER_V6) == [], 15), home.forward_chain()
            assert not cafe_reaches(home, SERVER_V6, PORT)
        finally:
            os.killpg(keep.pid, signal.SIGCONT)
        assert wait_for(lambda: len(home.pinholes(SERVER_V6)) == 1, 10), log.read_text()
        assert wait_for(lambda: "opened again" in log.read_text(), 5), log.read_text()
        assert f"the router had dropped the IPv6 pinhole to [{SERVER_V6}]:{PORT}: opened again" in log.read_text()
        assert cafe_reaches(home, SERVER_V6, PORT)
        again = json.loads((state / "pinholes.json").read_text())[SERVER_V6]["id"]
        assert ipv6_rows(lab, state)[2] == ("ipv6 pinhole", "pass", f"pinhole {again} lets in [{SERVER_V6}]:{PORT}")
    finally:
        if keep.poll() is None:
            os.killpg(keep.pid, signal.SIGTERM)
            keep.wait(10)
        assert server_cli(lab, "unexpose", state_dir=state).returncode == 0
    assert home.pinholes(SERVER_V6) == [], home.forward_chain()


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_router_without_pinholes_is_said_and_nothing_opens(lab, home, sshd_high, state):
    home.stop_miniupnpd()
    home.start_miniupnpd(pinholes=False)
    try:
        done = server_cli(lab, "expose", "--json", "--timeout", "1", state_dir=state)
    finally:
        home.stop_miniupnpd()
        home.start_miniupnpd()
    assert done.returncode == 0, done.stderr  # the IPv4 forward still went ahead
    assert "the router offers no IPv6 pinholes" in done.stderr
    assert f"allow TCP port {PORT} to {SERVER_V6}" in done.stderr
    assert json.loads(done.stdout)["pinholes"][0]["opened"] is False
    assert home.pinholes(SERVER_V6) == [], home.forward_chain()
    assert not (state / "pinholes.json").exists()
    assert not cafe_reaches(home, SERVER_V6, PORT)
    assert server_cli(lab, "unexpose", state_dir=state).returncode == 0


def test_a_pinhole_to_port_22_is_refused_with_the_fix_and_nothing_opens(lab, home, state):
    done = server_cli(lab, "expose", "--external-port", "22022", "--json", state_dir=state)
    assert done.returncode == 0, done.stderr
    assert f"the router refused an IPv6 pinhole to [{SERVER_V6}]:22" in done.stderr
    assert "routers open pinholes only to ports 1024 and up" in done.stderr
    assert "nbremote server harden --port 22222" in done.stderr
    assert home.pinholes(SERVER_V6) == [], home.forward_chain()
    assert not (state / "pinholes.json").exists()
    assert server_cli(lab, "unexpose", "--external-port", "22022", state_dir=state).returncode == 0


def test_the_boxs_ipv6_address_reported_over_the_lan_lets_the_cafe_in_over_ipv6(
    lab, home, sshd_high, box_firewall, state
):
    """A profile made at home with the LAN address only: the agent's hello on the first
    connection brings the box's global IPv6 address in, and the café reaches the box by it."""
    firewall = server_cli(lab, "firewall", "--yes", state_dir=state)
    assert firewall.returncode == 0, firewall.stderr
    exposed = server_cli(lab, "expose", "--json", state_dir=state)
    assert exposed.returncode == 0, exposed.stderr
    try:
        added = lab.nbremote("add", "box", "--address", f"192.168.77.2:{PORT}", "--user", ALICE)
        assert added.returncode == 0, added.stderr
        at_home = lab.nbremote("ls", "box")
        assert at_home.returncode == 0, at_home.stderr
        assert f"box's IPv6 address added: [{SERVER_V6}]:{PORT} (from the server)" in at_home.stderr
        hosts = json.loads(lab.nbremote("hosts", "--json").stdout)["hosts"][0]
        assert hosts["addresses"] == [f"192.168.77.2:{PORT}", f"[{SERVER_V6}]:{PORT}"]

        leave_home(lab)
        up = cafe_nbremote(lab, home, "up", "box", "--no-browser", "--detach")
        assert up.returncode == 0, up.stderr
        assert f"connected to box via IPv6 [{SERVER_V6}]:{PORT}" in up.stderr
        assert "address added" not in up.stderr  # said once, at home
    finally:
        cafe_nbremote(lab, home, "down", "box", timeout=60)
        assert server_cli(lab, "unexpose", state_dir=state).returncode == 0
