"""`server ddns --install-timer` under a real systemd 252 (issue 13, part 2).

PID 1 of this machine is not systemd, so the box here is a container
(tests/lab/systemdlab.py): systemd booted by systemd-nspawn on an overlay of
this machine's root, every write kept in the test's folder, in the lab's server
network namespace (the home network's LAN, the router's UPnP, BIND on the
internet side). nbremote is installed in it as pipx would (/usr/local/bin).
The timer's first check comes 30 s after boot (OnBootSec; in a container
systemd counts it from its own start), then one every period: the test takes
about 40 s, nearly all of it that wait (the box boots in about half a second).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dnslab import DNS_ADDR, NAME, ZONE, DnsLab
from homenet import ROUTER_WAN, HomeNet
from systemdlab import SystemdBox

NEW_WAN = "11.22.33.3"
PERIOD = 2
KEY = "/etc/nbremote/ddns.key"
UNITS = ["/etc/systemd/system/nbremote-ddns.service", "/etc/systemd/system/nbremote-ddns.timer"]


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet-timer"))
    yield built
    built.teardown()


@pytest.fixture(scope="module")
def dns(home, tmp_path_factory):
    built = DnsLab.build(home, tmp_path_factory.mktemp("dnslab-timer"))
    yield built
    built.teardown()


@pytest.fixture
def box(lab, dns, tmp_path):
    src = lab.src_copy / "src"
    booted = SystemdBox.boot(
        tmp_path / "box", netns=lab.server_ns, name="nbr-ddns", src=src, files={KEY: (dns.key_text(), 0o600)}
    )
    try:
        yield booted
    finally:
        booted.teardown()


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

    wait_for(lambda: service_runs(box) >= 1, 40, journal)  # the boot's check
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
