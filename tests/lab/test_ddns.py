"""`server ddns` against a real BIND 9 on the internet side, and `up` from the café by the name (issue 13, part 2).

The router forwards port 22 to the box by hand; named (tests/lab/dnslab.py) is
authoritative for nbr.test and grants the key gpubox.nbr.test's A/AAAA only. The
box runs `server ddns` as root with the WAN address from the router (UPnP). Every
refusal is checked against the whole zone (a transfer, serial included) and the
state folder: nothing changed.
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
from dnslab import DNS_ADDR, KEY_NAME, NAME, OTHER_ZONE, ZONE, DnsLab
from homenet import ROUTER_WAN, HomeNet
from netlab import ALICE, LAB_VENV, LAPTOP_USER

from serverlab import server_cli

NEW_WAN = "11.22.33.2"
PERIOD = 2


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet-ddns"))
    try:
        built.forward_port(22, 22)
        yield built
    finally:
        built.teardown()


@pytest.fixture(scope="module")
def dns(home, tmp_path_factory):
    built = DnsLab.build(home, tmp_path_factory.mktemp("dnslab"))
    yield built
    built.teardown()


@pytest.fixture
def key(dns, tmp_path) -> Path:
    return dns.key_file(tmp_path / "ddns.key")


@pytest.fixture
def state(tmp_path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def ddns(lab, state: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return server_cli(lab, "ddns", *args, "--timeout", "2", state_dir=state, timeout=timeout)


def unchanged(dns, state: Path, zone_before: str) -> None:
    assert dns.zone_text() == zone_before
    assert not (state / "ddns.json").exists()


def test_the_name_is_set_once_then_left_alone_while_the_address_stays(lab, home, dns, key, state):
    done = ddns(lab, state, NAME, "--server", DNS_ADDR, "--key", str(key), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["updated"] is True and doc["address"] == ROUTER_WAN and doc["zone"] == ZONE
    assert dns.lookup(NAME) == [ROUTER_WAN]
    zone = dns.zone_text()

    again = ddns(lab, state, NAME, "--server", f"{DNS_ADDR}:53", "--key", str(key))
    assert again.returncode == 0, again.stderr
    assert f"{NAME} already points at {ROUTER_WAN} (the last update sent it)" in again.stderr
    assert dns.zone_text() == zone  # no update sent: the serial did not move


def test_the_name_follows_a_new_wan_address_within_one_period_and_up_from_the_cafe_uses_it(
    lab, home, dns, key, state, tmp_path
):
    first = ddns(lab, state, NAME, "--server", DNS_ADDR, "--key", str(key), "--force")
    assert first.returncode == 0, first.stderr
    invite = server_cli(lab, "invite", "--user", ALICE, "--port", "22", "--json", state_dir=state)
    assert invite.returncode == 0, invite.stderr
    addresses = json.loads(invite.stdout)["addresses"]
    assert addresses[-2:] == [NAME, ROUTER_WAN], addresses  # the name first among the WAN addresses
    line = json.loads(invite.stdout)["invite"]
    added = dns.cafe_laptop(lab.nbremote_argv("add", "box", "--invite", line, "--json"), env=lab.nbremote_env())
    assert added.returncode == 0, added.stderr

    log = tmp_path / "ddns.log"
    keeper = lab.server_popen(
        [str(LAB_VENV / "bin" / "python"), "-m", "nbremote", "server", "ddns", NAME]
        + ["--server", DNS_ADDR, "--key", str(key), "--keep", "--period", str(PERIOD), "--timeout", "1"],
        env=lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state)}),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while "checking every" not in log.read_text():
            assert keeper.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        home.renumber_wan(NEW_WAN)
        changed = time.monotonic()
        while dns.lookup(NAME) != [NEW_WAN]:
            # One period, plus one check (the router's answer and the update).
            assert time.monotonic() - changed < PERIOD + 3, log.read_text()
            assert keeper.poll() is None, log.read_text()
            time.sleep(0.05)
        assert f"{NAME} → {NEW_WAN} (was {ROUTER_WAN}; zone {ZONE}" in log.read_text()

        up = dns.cafe_laptop(lab.nbremote_argv("up", "box", "--no-browser", "--detach"), env=lab.nbremote_env())
        assert up.returncode == 0, up.stderr
        assert f"connected to box via WAN {NAME}:22" in up.stderr, up.stderr
        assert dns.cafe_laptop(lab.nbremote_argv("down", "box"), env=lab.nbremote_env()).returncode == 0
        assert json.loads((state / "ddns.json").read_text())["address"] == NEW_WAN
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGTERM)
            keeper.wait(10)
        home.renumber_wan(ROUTER_WAN)
        shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


def test_a_wrong_secret_is_badsig_and_changes_nothing(lab, dns, tmp_path, state):
    zone = dns.zone_text()
    other = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", KEY_NAME], capture_output=True, text=True, check=True)
    wrong = dns.key_file(tmp_path / "wrong.key", other.stdout)
    done = ddns(lab, state, NAME, "--server", DNS_ADDR, "--key", str(wrong))
    assert done.returncode == 4, done.stderr  # AUTH_FAILED
    assert f"the DNS server {DNS_ADDR}:53 refused the signature of the TSIG key {KEY_NAME} (BADSIG)" in done.stderr
    unchanged(dns, state, zone)


def test_a_key_the_server_does_not_know_is_badkey_and_changes_nothing(lab, dns, tmp_path, state):
    zone = dns.zone_text()
    stranger = dns.key_file(tmp_path / "stranger.key", dns.key_text().replace(KEY_NAME, "stranger-key"))
    done = ddns(lab, state, NAME, "--server", DNS_ADDR, "--key", str(stranger))
    assert done.returncode == 4, done.stderr
    assert f"the DNS server {DNS_ADDR}:53 does not know the TSIG key stranger-key (BADKEY)" in done.stderr
    unchanged(dns, state, zone)


def test_a_zone_the_server_does_not_serve_is_a_clear_error_and_changes_nothing(lab, dns, key, state):
    zone = dns.zone_text()
    elsewhere = f"gpubox.{OTHER_ZONE}"
    told = ddns(lab, state, elsewhere, "--server", DNS_ADDR, "--key", str(key), "--zone", OTHER_ZONE)
    assert told.returncode == 1, told.stderr
    assert f"the DNS server {DNS_ADDR}:53 is not authoritative for the zone {OTHER_ZONE} (NOTAUTH)" in told.stderr
    found = ddns(lab, state, elsewhere, "--server", DNS_ADDR, "--key", str(key))
    assert found.returncode == 1, found.stderr
    assert f"the DNS server {DNS_ADDR}:53 is not authoritative for {elsewhere} (its answer" in found.stderr
    unchanged(dns, state, zone)


def test_a_name_the_key_is_not_granted_is_refused_and_changes_nothing(lab, dns, key, state):
    zone = dns.zone_text()
    done = ddns(lab, state, f"www.{ZONE}", "--server", DNS_ADDR, "--key", str(key))
    assert done.returncode == 1, done.stderr
    assert f"the DNS server {DNS_ADDR}:53 refused the update of www.{ZONE} in {ZONE} (REFUSED)" in done.stderr
    assert f"grant {KEY_NAME} name www.{ZONE}. A AAAA;" in done.stderr
    assert dns.lookup(f"www.{ZONE}") == ["11.22.33.200"]
    unchanged(dns, state, zone)


def test_an_unreachable_dns_server_times_out_clearly_and_changes_nothing(lab, dns, key, state):
    zone = dns.zone_text()
    silent = DNS_ADDR.rsplit(".", 1)[0] + ".195"  # in the DNS server's /26, nobody there
    done = ddns(lab, state, NAME, "--server", silent, "--key", str(key), "--zone", ZONE)
    assert done.returncode == 3, done.stderr  # UNREACHABLE
    assert f"no answer from the DNS server {silent}:53 after 2 s" in done.stderr
    unchanged(dns, state, zone)


@pytest.mark.parametrize(
    "name, key_text, mode, message",
    [
        ("not a name!", None, 0o600, "'not a name!' is not a DNS name to point at this machine"),
        ("11.22.33.2", None, 0o600, "'11.22.33.2' is not a DNS name to point at this machine"),
        (NAME, None, 0o644, "is mode 0644: others can read the key"),
        (NAME, "secret = hunter2\n", 0o600, "holds no TSIG key in BIND's format"),
    ],
    ids=["bad name", "an address", "key readable by others", "not a key file"],
)
def test_bad_input_is_refused_before_anything_is_sent(lab, dns, tmp_path, state, name, key_text, mode, message):
    zone = dns.zone_text()
    path = dns.key_file(tmp_path / "given.key", key_text, mode=mode)
    done = ddns(lab, state, name, "--server", DNS_ADDR, "--key", str(path))
    assert done.returncode == 2, done.stderr  # USAGE
    assert message in done.stderr
    unchanged(dns, state, zone)
