"""`server ddns` against a real BIND 9 on the internet side, and `up` from the café by the name (issue 13, part 2).

The router forwards port 22 to the box by hand; named (tests/lab/dnslab.py) is
authoritative for nbr.test and grants the key gpubox.nbr.test's A/AAAA only. The
box runs `server ddns` as root with the WAN address from the router (UPnP). Every
refusal is checked against the whole zone (a transfer, serial included) and the
state folder: nothing changed.

`server ddns --install-timer` runs under a real systemd 252. PID 1 of this machine
is not systemd, so the box for it is a container (tests/lab/systemdlab.py): systemd
booted by systemd-nspawn on an overlay of this machine's root, every write kept in
the test's folder, in the lab's server network namespace. nbremote is installed in
it as pipx would (/usr/local/bin). The timer's first check comes 30 s after boot
(OnBootSec; in a container systemd counts it from its own start), or at once when
the timer is installed later, as on a server that has been up a while: the box
boots as this module starts (in about half a second), so the tests before the
timer's give it most of that uptime and its test does not wait the 30 s out.
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
from systemdlab import SystemdBox

from serverlab import server_cli

NEW_WAN = "11.22.33.2"
PERIOD = 2
KEY = "/etc/nbremote/ddns.key"  # in the timer's box
UNITS = ["/etc/systemd/system/nbremote-ddns.service", "/etc/systemd/system/nbremote-ddns.timer"]


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


@pytest.fixture(scope="module", autouse=True)
def _early_box(lab, dns, tmp_path_factory):
    """The timer test's box, booted before the module's first test (see the docstring).
    A boot that fails is that test's failure: the others need no box."""
    try:
        booted = SystemdBox.boot(
            tmp_path_factory.mktemp("box"),
            netns=lab.server_ns,
            name="nbr-ddns",
            src=lab.src_copy / "src",
            files={KEY: (dns.key_text(), 0o600)},
        )
    except Exception as e:
        yield e
        return
    try:
        yield booted
    finally:
        booted.teardown()


@pytest.fixture
def box(_early_box) -> SystemdBox:
    if isinstance(_early_box, Exception):
        raise _early_box
    return _early_box


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


# --- the systemd timer: last in the module, so that the tests above give its box its uptime -----


def service_runs(box) -> int:
    """How many times systemd has started the check (the service's runs end, it is a oneshot)."""
    done = box.exec(["journalctl", "-u", "nbremote-ddns.service", "-o", "cat", "--no-pager"])
    return done.stdout.count("Starting nbremote-ddns.service")


def wait_for(predicate, seconds: float, what) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < seconds, what()
        time.sleep(0.1)
    return time.monotonic() - began


def test_the_timer_keeps_the_name_on_the_wan_address_and_remove_timer_takes_it_out(lab, home, dns, box):
    def journal() -> str:
        return box.exec(["journalctl", "-u", "nbremote-ddns", "--no-pager"]).stdout

    install = box.exec(
        ["nbremote", "server", "ddns", NAME, "--server", DNS_ADDR, "--key", KEY]
        + ["--install-timer", "--period", str(PERIOD), "--timeout", "2"]
    )
    assert install.returncode == 0, install.stderr
    assert f"{NAME} → {ROUTER_WAN}" in install.stderr
    assert f"systemd checks it at boot and every {PERIOD} s ({', '.join(UNITS)})" in install.stderr
    assert dns.lookup(NAME) == [ROUTER_WAN]
    for unit in UNITS:
        assert not Path(unit).exists()  # written in the box, never on this machine
        assert (box.upper / unit.lstrip("/")).exists()
    assert box.exec(["systemctl", "is-enabled", "nbremote-ddns.timer"]).stdout.strip() == "enabled"
    assert box.exec(["systemctl", "is-active", "nbremote-ddns.timer"]).stdout.strip() == "active"
    # The service runs the installed program by its own path, with no state folder given:
    # root's default, /var/lib/nbremote, where the record of the last update is.
    exec_start = box.exec(["systemctl", "show", "-p", "ExecStart", "nbremote-ddns.service"]).stdout
    assert "path=/usr/local/bin/nbremote" in exec_start, exec_start

    # The first check: 30 s after the box's boot, or at once when that is past by now.
    wait_for(lambda: service_runs(box) >= 1, 40, journal)
    wait_for(lambda: "Finished nbremote-ddns.service" in journal(), 10, journal)
    home.renumber_wan(NEW_WAN)
    try:
        # Within one period, plus one check (the router's answer and the update).
        wait_for(lambda: dns.lookup(NAME) == [NEW_WAN], PERIOD + 3, journal)
        assert f"{NAME} → {NEW_WAN} (was {ROUTER_WAN}; zone {ZONE}" in journal()
        record = box.exec(["cat", "/var/lib/nbremote/ddns.json"])
        assert f'"address": "{NEW_WAN}"' in record.stdout, record.stdout

        removed = box.exec(["nbremote", "server", "ddns", "--remove-timer"])
        assert removed.returncode == 0, removed.stderr
        assert f"timer stopped; removed {UNITS[1]}, {UNITS[0]}" in removed.stderr
        for unit in UNITS:
            assert box.exec(["test", "-e", unit]).returncode == 1
        assert "nbremote-ddns" not in box.exec(["systemctl", "list-timers", "--all", "--no-pager"]).stdout
        runs = service_runs(box)
        home.renumber_wan(ROUTER_WAN)
        time.sleep(2 * PERIOD + 1)
        assert service_runs(box) == runs  # no timer: no check, and the name stays
        assert dns.lookup(NAME) == [NEW_WAN]
        again = box.exec(["nbremote", "server", "ddns", "--remove-timer"])
        assert again.returncode == 0 and "no timer installed: nothing to remove" in again.stderr
    finally:
        if home.wan_address != ROUTER_WAN:
            home.renumber_wan(ROUTER_WAN)
