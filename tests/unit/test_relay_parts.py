"""The relay (issue 13, part 4) as pure parts: its spec, the invite's relay fields, the profile's,
the laptop's hop through it, and the box's tunnel command and its errors."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from clirun import run_main

from nbremote import invite, profiles, reach, sshfiles
from nbremote.addresses import Address, Relay, parse_relay
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import Profile
from nbremote.server import relay as relays
from nbremote.server import steps

FP = "SHA256:" + "q8Zk" * 10 + "abc"
BOB = Relay("bob", "vps.example.org", 2022)


@pytest.mark.parametrize(
    "text, expected, shown",
    [
        ("bob@vps.example.org", Relay("bob", "vps.example.org", 22), "bob@vps.example.org"),
        ("bob@vps.example.org:2022", BOB, "bob@vps.example.org:2022"),
        ("bob@[2001:db8::5]:22", Relay("bob", "2001:db8::5", 22), "bob@[2001:db8::5]"),
    ],
)
def test_parse_relay(text, expected, shown):
    assert parse_relay(text) == expected
    assert str(expected) == shown


@pytest.mark.parametrize(
    "text, named",
    [
        ("vps.example.org", "'vps.example.org' is not USER@HOST[:PORT]"),
        ("@vps.example.org", "is not USER@HOST[:PORT]"),
        ("-oProxyCommand=x@vps", "is not USER@HOST[:PORT]"),
        ("bob@-oProxyCommand=x", "'-oProxyCommand=x' is not a host name"),
        ("bob@vps:0", "out of range"),
        ("bob@vps;id", "'vps;id'"),
    ],
)
def test_parse_relay_rejects(text, named):
    with pytest.raises(NbremoteError) as caught:
        parse_relay(text)
    assert named in caught.value.message and caught.value.exit_code == ExitCode.USAGE


# --- the invite ----------------------------------------------------------------------


def test_invite_with_a_relay_round_trips_and_one_without_is_unchanged():
    made = invite.Invite(user="houser", hosts=("192.168.1.112",), port=22, fingerprint=FP, relay=BOB, tunnel_port=2222)
    line = invite.render(made)
    assert line == f"nbr1:houser@192.168.1.112:22#{FP},relay=bob@vps.example.org:2022,tunnel=2222"
    assert invite.parse(line) == made
    assert shlex.split(f"nbremote add box --invite {line}")[-1] == line  # pasted unquoted into a shell
    plain = invite.Invite(user="houser", hosts=("192.168.1.112",), port=22, fingerprint=FP)
    assert invite.render(plain) == f"nbr1:houser@192.168.1.112:22#{FP}"


@pytest.mark.parametrize(
    "tail, named",
    [
        (",relay=bob@vps", "a relay needs its tunnel port"),
        (",tunnel=2222", "a relay needs its tunnel port"),
        (",relay=vps,tunnel=2222", "'vps' is not USER@HOST[:PORT]"),
        (",relay=bob@vps,tunnel=x", "tunnel port 'x' is not a number"),
        (",relay=bob@vps,tunnel=70000", "tunnel port 70000 is out of range"),
        (",relay=bob@vps,tunnel=2222,tunnel=2223", "'tunnel=2223' is not relay="),
        (",via=bob@vps", "'via=bob@vps' is not relay="),
        (",relay=bob@vps$(id),tunnel=2222", "'vps$(id)'"),
    ],
)
def test_invite_rejects_bad_relay_fields(tail, named):
    with pytest.raises(NbremoteError) as caught:
        invite.parse(f"nbr1:houser@192.168.1.112:22#{FP}{tail}")
    assert named in caught.value.message and caught.value.exit_code == ExitCode.USAGE


TOKEN = "0123456789ab"


@pytest.mark.parametrize(
    "relay, wait, tail",
    [
        (False, False, ""),
        (True, False, ",relay=bob@vps.example.org:2022,tunnel=2222"),
        (False, True, f"#wait={TOKEN}"),
        (True, True, f",relay=bob@vps.example.org:2022,tunnel=2222#wait={TOKEN}"),
    ],
)
def test_invite_relay_and_wait_in_every_combination(relay, wait, tail):
    made = invite.Invite(
        user="houser",
        hosts=("192.168.1.112", "203.0.113.7"),
        port=22,
        fingerprint=FP,
        relay=BOB if relay else None,
        tunnel_port=2222 if relay else None,
        wait=TOKEN if wait else None,
    )
    line = invite.render(made)
    assert line == f"nbr1:houser@192.168.1.112,203.0.113.7:22#{FP}{tail}"
    assert invite.parse(line) == made
    assert shlex.split(f"nbremote add box --invite {line}")[-1] == line


@pytest.mark.parametrize(
    "tail, named",
    [
        (f"#wait={TOKEN},relay=bob@vps,tunnel=2222", "is not the token of a waiting"),  # the wait comes last
        (",relay=bob@vps,tunnel=2222#wait=xyz", "'xyz' is not the token of a waiting"),
        (",relay=bob@vps#wait=" + TOKEN, "a relay needs its tunnel port"),
        (",relay=vps,tunnel=2222#wait=" + TOKEN, "'vps' is not USER@HOST[:PORT]"),
        (",relay=bob@vps,tunnel=2222#later=" + TOKEN, "is not an nbremote invite"),
        (f",relay=bob@vps,tunnel=2222#wait={TOKEN}#wait={TOKEN}", "is not an nbremote invite"),
    ],
)
def test_invite_rejects_a_bad_relay_or_wait_beside_the_other(tail, named):
    with pytest.raises(NbremoteError) as caught:
        invite.parse(f"nbr1:houser@192.168.1.112:22#{FP}{tail}")
    assert named in caught.value.message and caught.value.exit_code == ExitCode.USAGE


def test_the_one_invite_builder_carries_the_relay_and_the_wait():
    blob = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    made = steps.build_invite(
        user="houser",
        lan=["192.168.1.112"],
        wan=None,
        extra=[],
        port=22,
        host_key_line=f"ssh-ed25519 {blob} root@box",
        wait=TOKEN,
        relay=("bob@vps.example.org:2022", 2222),
    )
    assert (made.relay, made.tunnel_port, made.wait) == (BOB, 2222, TOKEN)
    assert invite.render(made).endswith(",relay=bob@vps.example.org:2022,tunnel=2222#wait=" + TOKEN)


# --- the profile -----------------------------------------------------------------------


def _box(**kw) -> Profile:
    return Profile(
        name="box", addresses=(Address("192.168.1.112"),), user="houser", port=22, key="/home/me/.ssh/id_ed25519", **kw
    )


def test_profile_with_a_relay_round_trips_and_tries_the_relay_last(isolated):
    box = _box(relay=BOB, tunnel=2222)
    profiles.save({"box": box})
    assert profiles.load() == {"box": box}
    assert 'relay = "bob@vps.example.org:2022"\ntunnel = 2222\n' in profiles.profiles_path().read_text()
    assert box.endpoints() == [Address("192.168.1.112", 22), Address("127.0.0.1", 2222, BOB)]
    assert str(box.endpoints()[-1]) == "127.0.0.1:2222 via bob@vps.example.org:2022"


def test_a_relay_added_to_a_written_profile_keeps_its_comments_and_tables(isolated):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    text = (
        '# my hosts\n[hosts.box]  # the one at home\naddresses = ["192.168.1.112"]\nuser = "houser"\n'
        'key = "/home/me/.ssh/id_ed25519"\n\n[hosts.box.up]\ndir = "~/work"  # projects\n'
    )
    path.write_text(text)
    box = profiles.load()["box"]
    with_relay = profiles.dumps({"box": replace(box, relay=BOB, tunnel=2222)}, text)
    assert "# my hosts\n[hosts.box]  # the one at home\n" in with_relay
    assert 'dir = "~/work"  # projects\n' in with_relay
    path.write_text(with_relay)
    assert profiles.load()["box"] == replace(box, relay=BOB, tunnel=2222)
    assert profiles.dumps({"box": box}, with_relay) == text


@pytest.mark.parametrize(
    "extra, line, named",
    [
        ('relay = "bob@vps"\n', 3, "relay and tunnel go together"),
        ("tunnel = 2222\n", 3, "relay and tunnel go together"),
        ('relay = "vps"\ntunnel = 2222\n', 3, "'vps' is not USER@HOST[:PORT]"),
        ('relay = "bob@vps"\ntunnel = 0\n', 3, "tunnel 0 is out of range"),
    ],
)
def test_profile_rejects_a_bad_relay_naming_file_and_line(extra, line, named):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text('[hosts.box]\naddresses = ["10.0.0.1"]\n' + extra)
    with pytest.raises(NbremoteError) as caught:
        profiles.load()
    assert caught.value.message.startswith(f"{path}:{line}: ") and named in caught.value.message


def test_the_hop_through_the_relay_pins_the_box_and_keeps_the_relay_key_apart(isolated):
    box = _box(relay=BOB, tunnel=2222)
    options = dict(sshfiles.connection_options(box, box.endpoints()[-1]))
    assert options["HostName"] == "127.0.0.1" and options["Port"] == "2222"
    assert options["HostKeyAlias"] == "nbremote.box" and options["StrictHostKeyChecking"] == "yes"
    hop = shlex.split(options["ProxyCommand"])
    assert hop[-4:] == ["-W", "%h:%p", "--", "vps.example.org"]
    assert ["-p", "2022", "-l", "bob"] == hop[hop.index("-p") : hop.index("-p") + 4]
    assert f"UserKnownHostsFile={sshfiles.relay_known_hosts_path()}" in hop
    assert ["-i", "/home/me/.ssh/id_ed25519"] == hop[hop.index("-i") : hop.index("-i") + 2]
    # Never the relay's hop for a direct address, which our ssh_config's Host block for the
    # name carries once `up` went through the relay (and ssh would take it from there).
    assert dict(sshfiles.connection_options(box, box.endpoints()[0]))["ProxyCommand"] == "none"
    assert "ProxyCommand" not in dict(sshfiles.connection_options(_box(), _box().endpoints()[0]))
    # Through the laptop's one master to the relay when it is up, never making one itself.
    master = sshfiles.relay_master(BOB, "/home/me/.ssh/id_ed25519")
    assert ["-o", "ControlMaster=no", "-o", f"ControlPath={master.control_path}"] == hop[9:13]
    assert master.control_path != sshfiles.relay_master(BOB, None).control_path  # another key, another login
    argv = master.master_argv()
    assert argv[-4:] == ["-N", "-f", "--", "vps.example.org"] and "ControlPersist=60" in argv
    for option in ("User=bob", f"UserKnownHostsFile={sshfiles.relay_known_hosts_path()}", "BatchMode=yes"):
        assert option in argv
    assert ["-p", "2022"] == argv[argv.index("-p") : argv.index("-p") + 2]
    config = sshfiles.render_config({"box": box}, {})
    assert "ProxyCommand none" in config  # plain `ssh box` takes the first address until `up` used the relay


@pytest.mark.parametrize(
    "stderr, reason",
    [
        (
            "bob@vps.example.org: Permission denied (publickey).\r\nkex_exchange_identification: Connection closed by "
            "remote host",
            "the relay vps.example.org refused bob's key",
        ),
        (
            "channel 0: open failed: connect failed: Connection refused\r\nstdio forwarding failed\r\n"
            "kex_exchange_identification: Connection closed by remote host",
            "nothing answers on the relay's port 2222: is `nbremote server relay` running on the box?",
        ),
        (
            "ssh: connect to host vps.example.org port 2022: Connection refused\r\nkex_exchange_identification: "
            "Connection closed by remote host",
            "cannot reach the relay vps.example.org:2022 (Connection refused)",
        ),
        (
            "ssh: Could not resolve hostname vps.example.org: Name or service not known",
            "cannot reach the relay vps.example.org:2022 (name not found)",
        ),
        ("houser@box: Permission denied (publickey).", None),  # the box refused: not the relay's doing
        ("bob@box: Permission denied (publickey).", None),  # the same account name on the box: still the box
    ],
)
def test_relay_reason(stderr, reason, isolated):
    assert sshfiles.relay_reason(stderr, BOB, 2222) == reason


def test_the_host_key_scan_through_a_relay_logs_in_there_with_the_given_key(isolated, monkeypatch):
    ran = []

    def run(argv, **kw):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 255, "", "bob@vps.example.org: Permission denied (publickey).")

    monkeypatch.setattr(sshfiles.subprocess, "run", run)
    scan = sshfiles.scan_via(Address("127.0.0.1", 2222, BOB), 2, "/home/me/.ssh/work_key")
    assert scan.keys == [] and scan.error == "the relay vps.example.org refused bob's key"
    [argv] = ran
    hop = shlex.split(next(a for a in argv if a.startswith("ProxyCommand="))[len("ProxyCommand=") :])
    assert ["-i", "/home/me/.ssh/work_key"] == hop[hop.index("-i") : hop.index("-i") + 2]


def test_a_refusing_relay_is_unreachable_not_a_login_to_retry_with_a_password(isolated):
    box = _box(relay=BOB, tunnel=2222)
    conn = reach.PathConnection(
        box, sshfiles.connection_options, control_dir=Path("/nonexistent"), timeout=1, interactive=True, persist=False
    ).candidates[-1]
    error = reach._failure(conn, "bob@vps.example.org: Permission denied (publickey).")
    assert error.exit_code == ExitCode.UNREACHABLE
    assert error.message == "cannot reach box through the relay (the relay vps.example.org refused bob's key)"


# --- the box's tunnel ------------------------------------------------------------------


def _plan(key=None) -> relays.Plan:
    return relays.Plan(relay=BOB, tunnel_port=2222, local_port=22022, key=key, known_hosts=Path("/state/relay_kh"))


def test_tunnel_argv_forwards_the_relay_loopback_to_sshd_and_fails_fast():
    argv = relays.tunnel_argv(_plan(Path("/home/al/.ssh/id_ed25519")))
    assert argv[:3] == ["ssh", "-v", "-N"]
    assert ["-R", "127.0.0.1:2222:127.0.0.1:22022"] == argv[argv.index("-R") : argv.index("-R") + 2]
    for option in (
        "ExitOnForwardFailure=yes",
        "BatchMode=yes",
        "StrictHostKeyChecking=accept-new",
        "UserKnownHostsFile=/state/relay_kh",
        "IdentitiesOnly=yes",
    ):
        assert option in argv
    assert argv[-6:] == ["-p", "2022", "-l", "bob", "--", "vps.example.org"]
    assert "-i" not in relays.tunnel_argv(_plan())


@pytest.mark.parametrize(
    "stderr, code, message",
    [
        (
            "debug1: Authentications that can continue: publickey\nbob@vps.example.org: Permission denied (publickey).",
            ExitCode.AUTH_FAILED,
            "the relay bob@vps.example.org:2022 refused the key",
        ),
        (
            "debug1: remote forward failure for: listen 127.0.0.1:2222\n"
            "Error: remote port forwarding failed for listen port 2222",
            ExitCode.PORT_BUSY,
            "port 2222 is already taken on the relay vps.example.org",
        ),
        (
            "ssh: connect to host vps.example.org port 2022: No route to host",
            ExitCode.UNREACHABLE,
            "cannot reach the relay bob@vps.example.org:2022 (No route to host)",
        ),
        (
            "@@@\nWARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!",
            ExitCode.HOST_KEY,
            "the host key of the relay vps.example.org has changed: refusing to connect",
        ),
        (
            "debug1: x\nsomething else went wrong",
            ExitCode.ERROR,
            "the tunnel to the relay bob@vps.example.org:2022 failed: something else went wrong",
        ),
    ],
)
def test_tunnel_failures_say_what_to_do(stderr, code, message):
    error = relays.failure(stderr, _plan())
    assert (error.exit_code, error.message) == (code, message)


def test_relay_record_round_trip(tmp_path):
    record = relays.RelayRecord(tmp_path / "relay.json")
    assert record.last() is None
    record.record(_plan())
    assert record.last() == ("bob@vps.example.org:2022", 2222)
    (tmp_path / "relay.json").write_text("{not json")
    assert record.last() is None


# --- carrier-grade NAT, seen from the box -------------------------------------------------


@pytest.mark.parametrize(
    "router_wan, seen, reason",
    [
        (
            "100.72.9.4",
            None,
            "the router's WAN address 100.72.9.4 is in 100.64.0.0/10: the provider's carrier-grade NAT",
        ),
        (
            "10.0.0.7",
            None,
            "the router's WAN address 10.0.0.7 is private: another router or the provider's NAT is in front",
        ),
        (
            "11.22.33.1",
            {"address": "11.22.33.99", "source": "https://api.ipify.org"},
            "the router's WAN address is 11.22.33.1 but the internet sees 11.22.33.99 (https://api.ipify.org): "
            "a NAT is in front of the router",
        ),
        ("11.22.33.1", {"address": "11.22.33.1", "source": "https://api.ipify.org"}, None),
        ("11.22.33.1", {"address": "11.22.33.99", "source": "the router (UPnP)"}, None),  # not an outside view
        ("11.22.33.1", None, None),
        (None, None, None),
    ],
)
def test_nat_in_front(router_wan, seen, reason):
    from nbremote.server import netinfo

    assert netinfo.nat_in_front(router_wan, seen) == reason


def test_hosts_shows_the_relay_and_when_each_way_last_answered(capsys, isolated):
    profiles.save({"box": _box(relay=BOB, tunnel=2222)})
    reach.record_answer("box", Address("127.0.0.1", 2222, BOB), time.time() - 5)
    code, out, _ = run_main(capsys, "hosts", "--json")
    assert code == 0
    host = json.loads(out)["hosts"][0]
    assert host["relay"] == {"relay": "bob@vps.example.org:2022", "tunnel": 2222}
    assert host["answered"]["192.168.1.112:22"] is None
    assert isinstance(host["answered"]["127.0.0.1:2222 via bob@vps.example.org:2022"], float)
    assert [(w["kind"], w["answered"] is None) for w in host["ways"]] == [("LAN", True), ("relay", False)]
    code, out, _ = run_main(capsys, "hosts")
    assert code == 0
    assert re.search(
        r"LAN 192\.168\.1\.112:22 · relay 127\.0\.0\.1:2222 via bob@vps\.example\.org:2022 \(\d+ s ago\)",
        out.splitlines()[1],
    )
