"""Pure parts of the server commands: firewall rules, listeners, WAN answers, the CLI's bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbremote.errors import NbremoteError
from nbremote.server import firewall, netinfo, upnp
from nbremote.server.checks import listener_checks

DEBIAN_NFT = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n"


def test_the_firewall_block_is_added_once_and_removed_to_the_byte():
    once = firewall.with_block(DEBIAN_NFT, 22222)
    assert once.startswith(DEBIAN_NFT) and once.count(firewall.BEGIN) == 1
    assert "tcp dport { 22222 } accept" in once and "policy drop" in once
    assert "ct state established,related accept" in once
    assert firewall.with_block(once, 22222) == once
    assert firewall.without_block(once) == DEBIAN_NFT
    moved = firewall.with_block(once, 2200, also=(22222,))
    assert moved.count(firewall.BEGIN) == 1 and "tcp dport { 2200, 22222 }" in moved


def test_no_jupyter_port_is_ever_in_the_rules():
    assert "8888" not in firewall.nft_table(22) and "Jupyter" in firewall.WHY_NO_JUPYTER


class Unsupported:
    name = "fakewall"

    def is_supported(self):
        return False


def test_autodetect_lists_what_it_tried():
    with pytest.raises(NbremoteError) as caught:
        firewall.choose([Unsupported(), Unsupported()])
    assert caught.value.details == ["tried fakewall, fakewall"]


PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0
   1: 0100007F:22B8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2222 1 0
   2: 024DA8C0:0016 0A4DA8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0
"""
PROC_NET_TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:22B8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0
"""


def test_listening_sockets_are_read_from_proc_net_tcp():
    assert netinfo.parse_proc_net_tcp(PROC_NET_TCP) == [("0.0.0.0", 22, 1111), ("127.0.0.1", 8888, 2222)]
    assert netinfo.parse_proc_net_tcp(PROC_NET_TCP6) == [("::", 8888, 4444)]


def test_a_jupyter_on_the_network_fails_and_sshd_passes():
    rows = listener_checks(
        [
            netinfo.Listener("0.0.0.0", 8888, 1, 42, "jupyter-lab"),
            netinfo.Listener("127.0.0.1", 8889, 2, 43, "jupyter-lab"),
            netinfo.Listener("::", 22222, 3, 1, "sshd"),
        ],
        {22222},
        root=True,
    )
    assert [r.status for r in rows] == ["fail", "pass"]
    assert rows[0].detail.startswith("0.0.0.0:8888 jupyter-lab (pid 42)")
    assert "--ip=127.0.0.1" in rows[0].fix


class Reply(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_echo_services_are_tried_in_order_and_private_answers_are_not_trusted():
    answers = {"http://a": OSError("timed out"), "http://b": b"192.168.1.7\n", "http://c": b"203.0.114.9\n"}

    def opener(url, timeout):
        answer = answers[url]
        if isinstance(answer, Exception):
            raise answer
        return Reply(answer)

    address, url, failures = netinfo.wan_from_echo(["http://a", "http://b", "http://c"], 1, opener)
    assert (address, url) == ("203.0.114.9", "http://c")
    assert failures[0] == "http://a: timed out" and "not a public IP address" in failures[1]
    with pytest.raises(LookupError):
        netinfo.wan_from_echo(["http://a"], 1, opener)


def test_the_wan_record_notices_a_change(tmp_path):
    record = netinfo.WanRecord(tmp_path / "wan-ip.json")
    first = record.record("203.0.114.9", "router", now=100.0)
    assert not first.changed and first.previous is None
    same = record.record("203.0.114.9", "router", now=200.0)
    assert not same.changed and same.previous_at == 100.0
    moved = record.record("203.0.114.10", "router", now=300.0)
    assert moved.changed and moved.previous == "203.0.114.9"
    assert json.loads((tmp_path / "wan-ip.json").read_text())["address"] == "203.0.114.10"


class FakeRouter:
    def __init__(self):
        self.added = []

    def add(self, external, internal, lease):
        self.added.append((external, internal, lease))


def test_keep_renews_at_half_the_lease():
    router, slept = FakeRouter(), []
    renewed = []
    upnp.keep(router, 22222, 22, 600, sleep=slept.append, rounds=3, also=lambda: renewed.append(len(router.added)))
    assert slept == [300, 300, 300] and router.added == [(22222, 22, 600)] * 3
    assert renewed == [0, 1, 2]  # the IPv6 pinholes before each mapping, whatever becomes of it


class FlakyRouter(FakeRouter):
    """Refuses its second renewal, as a router between two WAN addresses does."""

    def add(self, external, internal, lease):
        super().add(external, internal, lease)
        if len(self.added) == 2:
            raise NbremoteError("the router refused to forward WAN port 22222")


def test_keep_tries_a_refused_renewal_again_at_the_next_period():
    router, slept, errors, renewed, pinholes = FlakyRouter(), [], [], [], []
    upnp.keep(
        router,
        22222,
        22,
        4,
        sleep=slept.append,
        rounds=2,
        on_renew=renewed.append,
        on_error=errors.append,
        also=lambda: pinholes.append(len(router.added)),
    )
    assert slept == [2, 2, 2] and len(router.added) == 3 and renewed == [1, 2]
    assert pinholes == [0, 1, 2]  # renewed in the period whose mapping was refused too
    assert [e.message for e in errors] == ["the router refused to forward WAN port 22222"]
    with pytest.raises(NbremoteError):  # without on_error, a refusal ends keep
        upnp.keep(FlakyRouter(), 22222, 22, 4, sleep=slept.append, rounds=2)


def test_manual_instructions_name_every_value():
    text = "\n".join(upnp.manual_instructions("192.168.1.112", 22222, 22222))
    assert "TCP · external port 22222 · internal IP 192.168.1.112 · internal port 22222" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["harden", "--port", "80", "--allow-user", "root"], "port 80 is below 1024 and not 22"),
        (["harden", "--port", "2222", "--allow-user", "nbr-nobody-here"], "there is no user 'nbr-nobody-here'"),
        (["harden", "--allow-user", "root"], "root cannot be an allowed user"),
    ],
)
def test_bad_input_exits_2_naming_the_value(args, message):
    # Inputs are checked before anything is read from the system, so this is safe anywhere.
    done = subprocess.run(
        [sys.executable, "-m", "nbremote", "server", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


SAVED = """# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MINE - [0:0]
-A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT
-A MINE -j RETURN
COMMIT
"""


def test_the_iptables_chain_goes_first_in_input_and_comes_out_to_the_byte():
    once = firewall.with_chain(SAVED, (22222,), 4)
    lines = once.splitlines()
    assert lines.index(f":{firewall.CHAIN} - [0:0]") == lines.index(":MINE - [0:0]") + 1
    assert firewall.first_input_rule(once) == f"-A INPUT -j {firewall.CHAIN}"
    assert firewall.chain_rules(once) == firewall.iptables_chain((22222,), 4)
    assert lines.index("*nat") == 1  # other tables untouched
    assert firewall.with_chain(once, (22222,), 4) == once
    assert firewall.without_chain(once) == SAVED
    moved = firewall.with_chain(once, (2200, 22222), 4)
    assert [r for r in firewall.chain_rules(moved) if "--dport" in r] == [
        f"-A {firewall.CHAIN} -p tcp -m tcp --dport 2200 -j ACCEPT",
        f"-A {firewall.CHAIN} -p tcp -m tcp --dport 22222 -j ACCEPT",
    ]
    assert "8888" not in once


def test_an_empty_iptables_ruleset_gets_a_filter_table_and_ipv6_its_own_icmp():
    text = firewall.with_chain("", (22,), 6)
    assert text.startswith("*filter\n:INPUT ACCEPT [0:0]\n") and text.endswith("COMMIT\n")
    assert f"-A {firewall.CHAIN} -p ipv6-icmp -j ACCEPT" in text
    # Discovery's and DHCPv6's answers from the link only: never from the internet.
    assert [line for line in text.splitlines() if "udp" in line] == [
        f"-A {firewall.CHAIN} -s fe80::/10 -p udp -m udp --sport 1900 -j ACCEPT",
        f"-A {firewall.CHAIN} -s fe80::/10 -d fe80::/10 -p udp -m udp --sport 547 --dport 546 -j ACCEPT",
    ]
    assert "192.168.0.0/16" not in text and "fe80" not in firewall.with_chain("", (22,), 4)
    counted = "[5:300] " + f"-A {firewall.CHAIN} -j DROP"
    assert firewall.without_chain(counted + "\n") == ""


def test_ufws_policy_words_are_read_from_its_defaults_file():
    assert firewall._ufw_policy(b'IPV6=yes\nDEFAULT_INPUT_POLICY="ACCEPT"\n') == "allow"
    assert firewall._ufw_policy(b'DEFAULT_INPUT_POLICY="DROP"\n') == "deny"
    assert firewall._ufw_policy(None) == ""


class Supported(Unsupported):
    def __init__(self, name):
        self.name = name

    def is_supported(self):
        return True


def test_autodetect_takes_the_first_supported_in_order():
    assert firewall.choose([Unsupported(), Supported("nftables"), Supported("iptables")]).name == "nftables"
    assert [b.name for b in firewall.default_backends()] == ["ufw", "nftables", "iptables"]
