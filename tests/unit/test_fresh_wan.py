"""The server's public address, reported in every agent hello, keeps the profile's WAN entry
fresh: what is taken (a public IP, in place of the one IP literal of its kind, port kept),
what is never taken (garbage, private, loopback, CGNAT, host names), and hosts.toml, comments
and all, that loses nothing."""

from __future__ import annotations

import json
import time

import pytest

from nbremote import addresses, agentlink, profiles, reach, sshfiles, status
from nbremote.addresses import Address, Relay, public_ip, refreshed
from nbremote.agent import protocol
from nbremote.remote import ProfileHost

LAN, WAN, NEW = Address("192.168.1.112", 22222), Address("11.22.33.1", 22022), "11.22.33.2"

HOSTS = """\
# my boxes
[hosts.gpubox]   # the one under the desk
addresses = [
  "192.168.1.112:22222",  # at home
  "11.22.33.1:22022",     # the router's forward: 22022 outside
  "gpubox.example.org:22022",  # a DNS name
]
user = "alice"  # me there
port = 22222

[hosts.other]
addresses = ["11.22.33.1"]  # the same address, another profile: never touched
"""


@pytest.mark.parametrize(
    "text",
    [
        "not an address",
        "",
        None,
        42,
        ["11.22.33.2"],
        "192.168.1.7",
        "10.1.2.3",
        "127.0.0.1",
        "::1",
        "100.64.3.4",  # carrier-grade NAT
        "169.254.1.1",
        "203.0.113.7",  # documentation
        "2001:db8::7",
        "fe80::1",
        "fd00::1",
        "224.0.0.1",
        "ff0e::1",
        "0.0.0.0",
        "255.255.255.255",
        "::ffff:11.22.33.2",
        "gpubox.example.org",
        "11.22.33.2:22",
        "1" * 100,
    ],
)
def test_public_ip_refuses_what_is_no_way_in_from_elsewhere(text):
    assert public_ip(text) is None


@pytest.mark.parametrize("text", ["11.22.33.2", "2a00:1450:4001::5", "8.8.4.4"])
def test_public_ip_takes_a_public_address(text):
    assert public_ip(text) == text


def test_refreshed_replaces_the_wan_literal_and_keeps_its_port():
    current = (LAN, WAN, Address("gpubox.example.org", 22022), Address("100.100.1.2"))
    assert refreshed(current, [(NEW, None)]) == [(WAN, Address(NEW, 22022))]


def test_refreshed_leaves_names_lan_vpn_and_a_known_address_alone():
    assert refreshed((LAN, Address("gpubox.example.org", 22022)), [(NEW, None)]) == []
    assert refreshed((LAN, Address("100.100.1.2")), [(NEW, None)]) == []
    assert refreshed((LAN, Address(NEW, 22022)), [(NEW, "11.22.33.1")]) == []
    relay = Address("127.0.0.1", 2222, Relay("bob", "vps.example.org"))
    assert refreshed((relay,), [(NEW, None)]) == []


def test_refreshed_with_two_wan_addresses_takes_only_the_one_the_server_had():
    other = Address("11.22.44.5", 22)
    assert refreshed((WAN, other), [(NEW, None)]) == []
    assert refreshed((WAN, other), [(NEW, "11.22.33.1")]) == [(WAN, Address(NEW, 22022))]


def test_refreshed_keeps_ipv4_and_ipv6_apart():
    v6 = Address("2a00:1450:4001::5", 22)
    assert refreshed((LAN, WAN, v6), [("2a00:1450:4001::9", None)]) == [(v6, Address("2a00:1450:4001::9", 22))]
    assert refreshed((LAN, v6), [(NEW, None)]) == []


def test_replace_addresses_changes_that_entry_only_comments_and_all(isolated):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(HOSTS)
    made = profiles.replace_addresses("gpubox", [(WAN, Address(NEW, 22022))])
    assert made == [(WAN, Address(NEW, 22022))]
    assert path.read_text() == HOSTS.replace('"11.22.33.1:22022",', f'"{NEW}:22022",')
    assert profiles.load()["other"].addresses == (Address("11.22.33.1"),)


def test_replace_addresses_leaves_a_file_edited_meanwhile_or_broken_alone(isolated):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(HOSTS)
    assert profiles.replace_addresses("gpubox", [(Address("11.22.33.9", 22022), Address(NEW, 22022))]) == []
    assert profiles.replace_addresses("nobody", [(WAN, Address(NEW, 22022))]) == []
    assert path.read_text() == HOSTS
    broken = HOSTS.replace("user = ", "user == ")
    path.write_text(broken)
    assert profiles.replace_addresses("gpubox", [(WAN, Address(NEW, 22022))]) == []
    assert path.read_text() == broken


def hello(public) -> str:
    return json.dumps({"nbremote_agent": 1, "hash": "0123456789ab", "python": "3.11.2", "public": public})


def test_parse_hello_takes_public_addresses_and_drops_every_other_report():
    reported = [
        {"address": NEW, "at": 1.0, "previous": "11.22.33.1"},
        {"address": "11.22.33.7", "previous": "not an address"},
        {"address": NEW},  # once is enough
        {"address": "192.168.1.7"},
        {"address": "127.0.0.1"},
        {"address": "100.64.0.9"},
        {"address": "evil.example.org"},
        {"address": "\x1b[31m"},
        "11.22.33.5",
        {"address": "11.22.33.8"},  # past the eight the laptop reads
    ]
    parsed = agentlink.parse_hello(hello(reported))
    assert parsed is not None and parsed.public == ((NEW, "11.22.33.1"), ("11.22.33.7", None))
    for junk in ("11.22.33.2", {"address": NEW}, 7, None):
        assert agentlink.parse_hello(hello(junk)).public == ()


def test_the_agent_reports_the_newest_wan_record(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("NBREMOTE_STATE_DIR", str(tmp_path / "root"))
    monkeypatch.setattr(protocol, "global_ipv6", lambda: [])  # this machine's own, if it has any
    assert protocol.public_addresses() == []
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "wan-ip.json").write_text(json.dumps({"address": "11.22.33.1", "at": 100.0}))
    mine = isolated.state / "nbremote-server"
    mine.mkdir(parents=True)
    (mine / "wan-ip.json").write_text(json.dumps({"address": NEW, "at": 200.0, "previous": "11.22.33.1"}))
    assert protocol.public_addresses() == [{"address": NEW, "at": 200.0, "previous": "11.22.33.1"}]
    (mine / "wan-ip.json").write_text("{broken")
    assert protocol.public_addresses() == [{"address": "11.22.33.1", "at": 100.0, "previous": None}]
    assert protocol.hello("0123456789ab")["public"] == [{"address": "11.22.33.1", "at": 100.0, "previous": None}]


def _place(told: list[str]) -> ProfileHost:
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HOSTS)
    return ProfileHost(profiles.load()["gpubox"], timeout=5, interactive=False, persist=False, notify=told.append)


def test_a_report_of_garbage_or_private_addresses_changes_nothing(isolated):
    told: list[str] = []
    place = _place(told)
    reach.record_answer("gpubox", WAN, 1.0)
    before = reach.answered()
    junk = [{"address": a} for a in ("192.168.1.9", "127.0.0.1", "100.64.0.1", "x", "203.0.113.9")]
    place._take_public(agentlink.parse_hello(hello(junk)))
    assert profiles.profiles_path().read_text() == HOSTS
    assert reach.answered() == before and told == [] and place.renumbered == []


def test_a_new_public_address_goes_in_the_profile_once_and_keeps_the_pinned_key(isolated):
    told: list[str] = []
    place = _place(told)
    reach.record_answer("gpubox", WAN, 1.0)
    report = agentlink.parse_hello(hello([{"address": NEW, "at": time.time(), "previous": "11.22.33.1"}]))
    place._take_public(report)
    assert told == [f"gpubox's WAN address changed: 11.22.33.1:22022 → {NEW}:22022 (from the server)"]
    profile = profiles.load()["gpubox"]
    assert profile.addresses[1] == Address(NEW, 22022)
    assert profiles.profiles_path().read_text() == HOSTS.replace('"11.22.33.1:22022",', f'"{NEW}:22022",')
    assert str(WAN) not in reach.answered().get("gpubox", {})  # no record of an address no profile lists
    # The next race tries the new address, and only with the key pinned for the profile.
    assert [str(a) for a, _ in place.connection.candidates][1] == f"{NEW}:22022"
    options = dict(sshfiles.connection_options(profile, Address(NEW, 22022)))
    assert options["HostKeyAlias"] == "nbremote.gpubox" and options["StrictHostKeyChecking"] == "yes"
    place._take_public(report)  # the same report again: said once, changed once
    fresh = ProfileHost(profile, timeout=5, interactive=False, persist=False, notify=told.append)
    fresh._take_public(report)
    assert len(told) == 1 and profiles.profiles_path().read_text().count(NEW) == 1


def test_status_says_the_path_its_kind_each_way_in_and_a_change():
    result = status.HostStatus(
        host="gpubox",
        label="gpubox",
        reachable=True,
        seconds=0.3,
        path=f"{NEW}:22022",
        rtt=0.038,
        kind="WAN",
        ways=[
            {"address": "192.168.1.112:22222", "kind": "LAN", "answered": time.time() - 7200},
            {"address": f"{NEW}:22022", "kind": "WAN", "answered": time.time()},
        ],
        renumbered=[(WAN, Address(NEW, 22022))],
    )
    lines = status.render([result])
    assert lines[0].startswith(f"gpubox  via WAN {NEW}:22022 38 ms")
    assert lines[1] == f"  gpubox's WAN address changed: 11.22.33.1:22022 → {NEW}:22022 (from the server)"
    assert lines[2] == (
        f"  ways in  LAN 192.168.1.112:22222 (last answered 2 h 00 min ago) · WAN {NEW}:22022 (last answered 0 s ago)"
    )
    doc = result.to_json()
    assert doc["kind"] == "WAN" and doc["addresses"][0]["kind"] == "LAN"
    assert doc["renumbered"] == [{"old": "11.22.33.1:22022", "new": f"{NEW}:22022"}]


# --- the box's global IPv6 address, reported beside the WAN address ---------------------------

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
3ffe0000007700010000000000000002 02 40 00 80     eth1
3ffe00000077000102115afffe3b1c2d 02 40 00 01     eth1
3ffe0000007700010000000000000003 02 40 00 20     eth1
3ffe0000007700010000000000000004 02 40 00 40     eth1
fd000000000000000000000000000002 04 40 00 80     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000005 03 40 00 80     eth2
2a001450400100000000000000000005 03 40 00 80     eth2
2a001450400100000000000000000006 03 40 00 80     eth2
garbage line
"""


def test_the_agent_reads_the_global_ipv6_addresses_from_the_kernel_and_skips_the_rest(tmp_path, monkeypatch):
    path = tmp_path / "if_inet6"
    path.write_text(IF_INET6)
    # Not loopback, a temporary (01), deprecated (20) or tentative (40) one, a ULA or link-local one;
    # the documentation range is global unicast here, and the laptop's public_ip drops it.
    assert protocol.global_ipv6(str(path)) == ["3ffe:0:77:1::2", "2001:db8::5"]
    assert protocol.global_ipv6(str(tmp_path / "absent")) == []
    monkeypatch.setenv("NBREMOTE_STATE_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(protocol, "global_ipv6", lambda: ["3ffe:0:77:1::2"])
    assert protocol.public_addresses() == [{"address": "3ffe:0:77:1::2"}]


V6 = "2a00:1450:4001::5"


def test_refreshed_adds_the_first_ipv6_address_after_the_lan_entries_on_the_lan_port():
    current = (LAN, WAN, Address("gpubox.example.org", 22022))
    assert refreshed(current, [(NEW, None), (V6, None), ("2a00:1450:4001::6", None)]) == [
        (WAN, Address(NEW, 22022)),
        (None, Address(V6, 22222)),
    ]
    assert addresses.applied(current, [(None, Address(V6, 22222))]) == (LAN, Address(V6, 22222)) + current[1:]
    assert refreshed((WAN,), [(V6, None)]) == [(None, Address(V6, None))]
    # The box has two: the one the profile has is kept, the other never replaces it.
    assert refreshed((LAN, Address(V6, 22222)), [("2a00:1450:4001::6", None), (V6, None)]) == []


def test_an_added_ipv6_address_goes_in_the_file_after_the_lan_entry_comments_and_all(isolated):
    told: list[str] = []
    place = _place(told)
    place._take_public(agentlink.parse_hello(hello([{"address": V6, "at": time.time()}])))
    assert told == [f"gpubox's IPv6 address added: [{V6}]:22222 (from the server)"]
    assert profiles.profiles_path().read_text() == HOSTS.replace(
        '"192.168.1.112:22222",  # at home\n', f'"192.168.1.112:22222",  # at home\n  "[{V6}]:22222",\n'
    )
    assert profiles.load()["gpubox"].addresses[1] == Address(V6, 22222)
    assert [str(a) for a, _ in place.connection.candidates][1] == f"[{V6}]:22222"
    assert place.renumbered == [(None, Address(V6, 22222))]
    place._take_public(agentlink.parse_hello(hello([{"address": V6, "at": time.time()}])))
    assert len(told) == 1 and profiles.profiles_path().read_text().count(V6) == 1
    doc = status.HostStatus(
        host="gpubox", label="gpubox", reachable=True, seconds=0.3, renumbered=place.renumbered
    ).to_json()
    assert doc["renumbered"] == [{"old": None, "new": f"[{V6}]:22222"}]
