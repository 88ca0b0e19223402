"""Host profiles: addresses, the invite line, the TOML file (errors with file:line), the ssh files."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from nbremote import invite, profiles, sshfiles
from nbremote.addresses import Address, kind, parse_address
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import LastPath, Profile, UpDefaults

FP = "SHA256:" + "q8Zk" * 10 + "abc"  # 43 characters after the prefix


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.168.1.112", Address("192.168.1.112")),
        ("192.168.1.112:22222", Address("192.168.1.112", 22222)),
        ("gpubox.example.org", Address("gpubox.example.org")),
        ("gpubox:2222", Address("gpubox", 2222)),
        ("fe80::1", Address("fe80::1")),
        ("[2001:db8::7]:22", Address("2001:db8::7", 22)),
    ],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected
    assert str(expected) in (text, f"[{text}]")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-oProxyCommand=x",
        "gpu box",
        "a/b",
        "host;rm",
        "999.1.1.1",
        "host:0",
        "host:70000",
        "host:ssh",
        "[nothex]:22",
        "a..b",
        "$(id)",
    ],
)
def test_parse_address_rejects_naming_the_value(text):
    with pytest.raises(NbremoteError) as caught:
        parse_address(text)
    assert repr(text) in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    "host, expected",
    [
        ("192.168.1.112", "LAN"),
        ("10.1.2.3", "LAN"),
        ("gpubox.local", "LAN"),
        ("gpubox", "LAN"),
        ("203.0.113.7", "WAN"),
        ("11.22.33.1", "WAN"),
        ("gpubox.example.org", "WAN"),
        ("100.101.102.103", "VPN"),
        ("gpubox.tail1234.ts.net", "VPN"),
        ("fd00::1", "LAN"),
        ("fd7a:115c:a1e0::1234", "VPN"),
        ("::ffff:192.168.1.112", "LAN"),
        ("::ffff:11.22.33.1", "WAN"),
        ("2001:db8::7", "IPv6"),
        ("192.168.77.2", "LAN"),
    ],
)
def test_kind(host, expected):
    assert kind(host) == expected


# --- invite -------------------------------------------------------------------------


def test_invite_round_trip():
    made = invite.Invite(user="houser", hosts=("192.168.1.112", "203.0.113.7", "fd00::2"), port=22222, fingerprint=FP)
    line = invite.render(made)
    assert line == f"nbr1:houser@192.168.1.112,203.0.113.7,[fd00::2]:22222#{FP}"
    assert invite.parse(line) == made
    assert invite.parse("  " + line + "\n") == made
    assert made.addresses[1] == Address("203.0.113.7", 22222)


@pytest.mark.parametrize(
    "line, named",
    [
        ("nbr1:houser@192.168.1.112:22#MD5:aa:bb", "'MD5:aa:bb'"),  # wrong fingerprint format
        (f"nbr1:houser@192.168.1.112:22#{FP[:-5]}", repr(FP[:-5])),  # truncated
        (f"nbr1:houser@192.168.1.112:22#{FP[:-1]}!", repr(FP[:-1] + "!")),  # tampered
        ("nbr1:houser@192.168.1.112:22", "'nbr1:houser@192.168.1.112:22'"),  # truncated before the key
        (f"nbr1:houser@192.168.1.112#{FP}", "'nbr1:houser@192.168.1.112#"),  # no port
        (f"nbr2:houser@192.168.1.112:22#{FP}", "'nbr2:"),
        (f"nbr1:hou ser@192.168.1.112:22#{FP}", "'hou ser'"),
        (f"nbr1:houser@192.168.1.112,bad;host:22#{FP}", "'bad;host'"),
        (f"nbr1:houser@192.168.1.112:2222,10.0.0.1:22#{FP}", "'192.168.1.112:2222'"),
        (f"nbr1:houser@192.168.1.112:99999#{FP}", "99999"),
    ],
)
def test_invite_rejects_naming_the_value(line, named):
    with pytest.raises(NbremoteError) as caught:
        invite.parse(line)
    assert named in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


def test_fingerprint_of_a_key_blob_is_ssh_keygens(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True).stdout
    blob = (tmp_path / "k.pub").read_text().split()[1]
    assert invite.fingerprint(blob) == listed.split()[1]
    assert invite.valid_fingerprint(invite.fingerprint(blob))


# --- the profile file ----------------------------------------------------------------


def _profile(name="gpubox", **kw) -> Profile:
    base = dict(
        name=name,
        addresses=(Address("192.168.1.112"), Address("203.0.113.7", 22222)),
        user="houser",
        port=22,
        key="/home/me/.ssh/id_ed25519",
    )
    base.update(kw)
    return Profile(**base)


def test_save_and_load_round_trip_atomic_0600(isolated):
    every = {
        "gpubox": _profile(up=UpDefaults(dir="~/projects", env="torch", mode="notebook", port=8890, keep_output=True)),
        "my.box": _profile("my.box", user=None, key=None, port=2222),
    }
    profiles.save(every)
    path = profiles.profiles_path()
    assert path == isolated.root / "config" / "nbremote" / "hosts.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert profiles.load() == every
    assert '[hosts."my.box"]' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["hosts.toml"]  # no temp file left behind


def test_missing_file_is_no_profiles():
    assert profiles.load() == {}


def _write(text: str):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_syntax_error_names_file_and_line():
    path = _write('[hosts.gpubox]\naddresses = ["192.168.1.112"]\nuser = "houser\n')
    with pytest.raises(NbremoteError) as caught:
        profiles.load()
    assert caught.value.message.startswith(f"{path}:3: ")
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize(
    "text, line, named",
    [
        ('[hosts.gpubox]\naddresses = ["192.168.1.112"]\n\n# x\ncolour = "red"\n', 5, "'colour'"),
        ('[hosts.gpubox]\naddresses = ["192.168.1.112"]\n[hosts.gpubox.up]\ndir = "~"\nbrowser = 1\n', 5, "'browser'"),
        ('[hosts.a]\naddresses = ["10.0.0.1"]\n[hosts.gpubox]\naddresses = ["bad host"]\n', 4, "'bad host'"),
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\nport = 70000\n', 3, "70000"),
        ("[hosts.gpubox]\naddresses = []\n", 2, "addresses"),
        ('[hosts."bad name"]\naddresses = ["10.0.0.1"]\n', 1, "'bad name'"),
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\n[hosts.gpubox.up]\nmode = "tui"\n', 4, "'tui'"),
        ("[global]\nx = 1\n", 1, "'global'"),
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\n[hosts.gpubox.up]\nkeep_output = "yes"\n', 4, "keep_output"),
    ],
)
def test_bad_values_name_file_line_and_value(text, line, named):
    path = _write(text)
    with pytest.raises(NbremoteError) as caught:
        profiles.load()
    assert caught.value.message.startswith(f"{path}:{line}: "), caught.value.message
    assert named in caught.value.message
    assert caught.value.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("name", ["gpu box", "a/b", "x;y", "$(id)", "-x", "", "a*", "é"])
def test_check_name_rejects(name):
    with pytest.raises(NbremoteError) as caught:
        profiles.check_name(name)
    assert repr(name) in caught.value.message


def test_last_path_is_state_not_config(isolated):
    profiles.record_path("gpubox", LastPath(address="192.168.1.112:22", kind="LAN", rtt_ms=2.0, login_s=0.2, when=1.0))
    assert profiles.last_paths()["gpubox"].address == "192.168.1.112:22"
    assert (isolated.state / "nbremote" / "hosts.json").exists()
    profiles.forget_path("gpubox")
    assert profiles.last_paths() == {}


# --- ssh files --------------------------------------------------------------------------


def test_host_block_uses_last_address_and_one_alias(isolated):
    every = {"gpubox": _profile()}
    text = sshfiles.render_config(every, {})
    assert "Host gpubox\n    HostName 192.168.1.112\n    Port 22\n    User houser\n" in text
    assert "    HostKeyAlias nbremote.gpubox\n" in text
    assert f"    UserKnownHostsFile {sshfiles.known_hosts_path()}\n" in text
    assert "    StrictHostKeyChecking yes\n" in text
    wan = LastPath(address="203.0.113.7:22222", kind="WAN", rtt_ms=38, login_s=0.5, when=1)
    text = sshfiles.render_config(every, {"gpubox": wan})
    assert "HostName 203.0.113.7\n    Port 22222\n" in text


def test_known_hosts_replaces_only_its_alias():
    old = "nbremote.a ssh-ed25519 AAAA1\nnbremote.gpubox ssh-ed25519 OLD\nnbremote.gpubox.x ssh-rsa K\n"
    new = sshfiles.render_known_hosts(old, "nbremote.gpubox", [("ssh-ed25519", "NEW")])
    assert new == "nbremote.a ssh-ed25519 AAAA1\nnbremote.gpubox.x ssh-rsa K\nnbremote.gpubox ssh-ed25519 NEW\n"
    assert sshfiles.render_known_hosts(new, "nbremote.gpubox", None).count("gpubox ") == 0


def test_host_names_in_ssh_config():
    text = "Host server server-bob\n  HostName x\nhost=laptop\nHost *.example.org !bad *\nMatch host y\n"
    assert sshfiles.host_names(text) == {"server", "server-bob", "laptop"}


def test_include_goes_on_top_once_with_a_backup(isolated):
    ssh_dir = isolated.home / ".ssh"
    ssh_dir.mkdir()
    original = b"# mine\r\nHost work\n    User me\n\xe9 odd bytes, no final newline"
    (ssh_dir / "config").write_bytes(original)
    os.chmod(ssh_dir / "config", 0o644)
    backup = sshfiles.ensure_include()
    line = f"Include {sshfiles.our_config_path()}\n".encode()
    assert (ssh_dir / "config").read_bytes() == line + original
    assert stat.S_IMODE((ssh_dir / "config").stat().st_mode) == 0o644
    assert backup == ssh_dir / "config.nbremote-backup" and backup.read_bytes() == original
    assert sshfiles.ensure_include() is None
    assert (ssh_dir / "config").read_bytes() == line + original


def test_include_in_a_fresh_home(isolated):
    assert sshfiles.ensure_include() is None
    config = isolated.home / ".ssh" / "config"
    assert config.read_text() == f"Include {sshfiles.our_config_path()}\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700


# --- the server side of the invite ----------------------------------------------------


def test_server_invite_lists_lan_then_wan_then_extra(tmp_path):
    from nbremote.server import steps

    key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = (tmp_path / "host.pub").read_text()
    made = steps.build_invite(
        user="houser",
        lan=["192.168.1.112", "fd00::2", "10.8.0.1"],
        wan="203.0.113.7",
        extra=["gpubox.example.org", "192.168.1.112"],
        port=22222,
        host_key_line=line,
    )
    listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{key}.pub"], capture_output=True, text=True).stdout
    assert invite.render(made) == (
        "nbr1:houser@192.168.1.112,10.8.0.1,203.0.113.7,gpubox.example.org:22222#" + listed.split()[1]
    )
    assert invite.parse(invite.render(made)) == made
    with pytest.raises(NbremoteError, match="ed25519 host key"):
        steps.build_invite(user="houser", lan=[], wan=None, extra=[], port=22, host_key_line="ssh-rsa AAAA")
    with pytest.raises(NbremoteError, match="no address"):
        steps.build_invite(user="houser", lan=[], wan=None, extra=[], port=22, host_key_line=line)
