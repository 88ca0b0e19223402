"""IPv6 (issue 13, part 3), the pure parts: which addresses count, where they go in the
invite, how a refused pinhole is told. The pinhole itself is tested against a real
miniupnpd in tests/lab/test_server_ipv6.py."""

from __future__ import annotations

import json
import subprocess

import pytest

from nbremote import invite
from nbremote.addresses import Address
from nbremote.reach import Reached
from nbremote.server import firewall, netinfo, steps, upnp


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2001:db8:77:1::2", True),  # the documentation range stands for a global address
        ("2a01:4f8::1", True),
        ("fd00::2", False),  # a ULA: the LAN's own
        ("fe80::1", False),
        ("::1", False),
        ("::ffff:11.22.33.1", False),
        ("ff02::c", False),
        ("11.22.33.1", False),
        ("not an address", False),
    ],
)
def test_global_ipv6_is_global_unicast(text, expected):
    assert netinfo.is_global_ipv6(text) is expected


IP_ADDR = [
    {
        "ifname": "eth1",
        "addr_info": [
            {"family": "inet6", "local": "2001:db8:77:1:1c2e:5ff:fe11:2233", "prefixlen": 64, "mngtmpaddr": True},
            {"family": "inet6", "local": "2001:db8:77:1:9d41:7a0b:c3e2:15f0", "prefixlen": 64, "temporary": True},
            {"family": "inet6", "local": "2001:db8:77:1::99", "prefixlen": 64, "deprecated": True},
            {"family": "inet6", "local": "fd00::2", "prefixlen": 64},
        ],
    },
    {"ifname": "wg0", "addr_info": [{}]},
]


def test_this_machines_global_ipv6_leaves_out_temporary_and_deprecated_ones(monkeypatch):
    def run(argv, **_):
        assert argv == ["ip", "-j", "-6", "addr", "show", "scope", "global"]
        return subprocess.CompletedProcess(argv, 0, json.dumps(IP_ADDR), "")

    monkeypatch.setattr(netinfo.system, "run", run)
    assert netinfo.global_ipv6() == [("2001:db8:77:1:1c2e:5ff:fe11:2233", "eth1")]


def test_the_invite_puts_global_ipv6_after_the_lan_and_before_the_wan(tmp_path):
    key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    made = steps.build_invite(
        user="houser",
        lan=["192.168.1.112", "2001:db8:77:1::2", "fd00::2"],
        wan="203.0.113.7",
        extra=["gpubox.example.org"],
        port=22222,
        host_key_line=(tmp_path / "host.pub").read_text(),
        ipv6=["2001:db8:77:1::2"],
    )
    assert made.hosts == ("192.168.1.112", "2001:db8:77:1::2", "203.0.113.7", "gpubox.example.org")
    line = invite.render(made)
    assert line.startswith("nbr1:houser@192.168.1.112,[2001:db8:77:1::2],203.0.113.7,gpubox.example.org:22222#")
    assert invite.parse(line) == made
    assert made.addresses[1] == Address("2001:db8:77:1::2", 22222)


def test_up_names_the_ipv6_path():
    reached = Reached(Address("2001:db8:77:1::2", 22222), 0.2, 0.012)
    assert reached.describe() == "IPv6 [2001:db8:77:1::2]:22222 (12 ms)"


def test_a_pinhole_lease_is_never_zero_nor_over_a_day():
    assert steps.pinhole_lease(0) == 86400
    assert steps.pinhole_lease(3600) == 3600
    assert steps.pinhole_lease(7 * 86400) == 86400


def test_a_refused_pinhole_says_why_and_what_to_do():
    said, fix = upnp.pinhole_refusal("2001:db8::2", 22, upnp.UpnpFault(606, "Action not authorized"))
    assert said == (
        "the router refused an IPv6 pinhole to [2001:db8::2]:22 (not authorized: routers open pinholes "
        "only to ports 1024 and up, and only for the asking address)"
    )
    assert "nbremote server harden --port 22222" in fix
    said, fix = upnp.pinhole_refusal("2001:db8::2", 22222, upnp.UpnpFault(703, "InboundPinholeNotAllowed"))
    assert "allow no inbound pinholes" in said
    assert fix == "open TCP port 22222 to 2001:db8::2 in the router's IPv6 firewall page"
    said, _ = upnp.pinhole_refusal("2001:db8::2", 22222, upnp.UpnpFault(501, "Action Failed"))
    assert "(UPnP error 501: Action Failed)" in said


@pytest.mark.parametrize("setting, said", [(b"IPV6=no\n", True), (b'IPV6="yes"\n', False)])
def test_ufw_without_ipv6_is_named_where_the_box_has_global_ipv6(tmp_path, monkeypatch, setting, said):
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "ufw").write_bytes(setting)
    monkeypatch.setattr(firewall.netinfo, "global_ipv6", lambda: [("2001:db8:77:1::2", "eth1")])
    note = firewall.Ufw(etc=tmp_path)._ipv6_note()
    assert ("drops all IPv6, so ssh over IPv6 cannot come in" in note) is said
    monkeypatch.setattr(firewall.netinfo, "global_ipv6", lambda: [])
    assert firewall.Ufw(etc=tmp_path)._ipv6_note() == ""


def test_the_pinhole_record_keeps_what_unexpose_needs_and_goes_with_the_last(tmp_path):
    record = steps.PinholeRecord(tmp_path / "pinholes.json")
    assert record.all() == {}
    record.add("2001:db8::2", 22222, 7, "http://[fe80::1]:5000/ctl/IP6FCtl", "eth1")
    record.add("2001:db8:1::2", 22222, 8, "http://[2001:db8:1::1]:5000/ctl/IP6FCtl", "eth2")
    assert record.firewall("2001:db8::2") == upnp.Firewall6("http://[fe80::1]:5000/ctl/IP6FCtl", "2001:db8::2", "eth1")
    record.forget("2001:db8::2")
    assert list(record.all()) == ["2001:db8:1::2"]
    record.forget("2001:db8:1::2")
    assert not (tmp_path / "pinholes.json").exists()
    (tmp_path / "pinholes.json").write_text("[1, 2]")  # not ours: no record
    assert record.all() == {}


# --- `server check`'s IPv6 rows -------------------------------------------------------------


class Ip6tables:
    """iptables-save for both families from rulesets held here (the argv seam of Iptables)."""

    def __init__(self, v4: str, v6: str | None) -> None:
        self.rules = {"iptables": v4, "ip6tables": v6}

    def __call__(self, argv, *, input=None, **_):
        tool = argv[0].rpartition("-")[0]
        text = self.rules[tool]
        return subprocess.CompletedProcess(argv, 0 if text is not None else 1, text or "", "")


def _chain(port: int, family: int) -> str:
    return firewall.with_chain("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", (port,), family)


def test_the_ipv6_firewall_row_says_whether_ssh_comes_in_over_ipv6_as_over_ipv4(monkeypatch, tmp_path):
    monkeypatch.setattr(firewall.system, "which", lambda name: f"/usr/sbin/{name}")
    both = firewall.Iptables(etc=tmp_path, run=Ip6tables(_chain(22222, 4), _chain(22222, 6)))
    monkeypatch.setattr(firewall, "default_backends", lambda: [both])
    assert firewall.ipv6_row(True, {22222}) == firewall.Check(
        "ipv6 firewall", firewall.PASS, "iptables: allow 22222/tcp over IPv6 as over IPv4"
    )
    v4_only = firewall.Iptables(etc=tmp_path, run=Ip6tables(_chain(22222, 4), "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"))
    monkeypatch.setattr(firewall, "default_backends", lambda: [v4_only])
    row = firewall.ipv6_row(True, {22222})
    assert row.status == firewall.FAIL and row.fix == firewall.rootcmd.command("server", "firewall")
    assert (
        row.detail == "iptables: ip6tables has no nbremote rule for 22222/tcp: ssh over IPv6 is left to the rules there"
    )
    moved = firewall.ipv6_row(True, {2200})  # sshd moved since: no rule for its port
    assert moved.status == firewall.WARN and "no nbremote rule for ssh" in moved.detail
    assert firewall.ipv6_row(False, {22222}).status == firewall.SKIP


def test_the_ipv6_firewall_row_names_ufws_ipv6_switch(monkeypatch, tmp_path):
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "ufw").write_bytes(b"IPV6=no\n")
    monkeypatch.setattr(firewall.netinfo, "global_ipv6", lambda: [("3ffe:0:77:1::2", "eth1")])
    ufw = firewall.Ufw(etc=tmp_path)
    monkeypatch.setattr(ufw, "active_port", lambda: 22222)
    monkeypatch.setattr(firewall, "default_backends", lambda: [ufw])
    monkeypatch.setattr(ufw, "is_supported", lambda: True)
    row = firewall.ipv6_row(True, {22222})
    assert row.status == firewall.FAIL and "drops all IPv6, so ssh over IPv6 cannot come in" in row.detail
    assert row.fix == "IPV6=yes in /etc/default/ufw, then `sudo ufw reload`"


def test_check_has_no_ipv6_rows_where_the_box_has_no_global_ipv6(monkeypatch):
    monkeypatch.setattr(steps.netinfo, "global_ipv6", lambda: [])
    assert steps.ipv6_checks(True, {22222}, 1.0) == []
