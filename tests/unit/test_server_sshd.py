"""The pure parts of `nbremote server harden`: sshd -T parsing, the drop-in, the Include, inputs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import sshd
from nbremote.server.sshd import Hardening

SSHD_T = """port 22
port 2222
addressfamily any
passwordauthentication yes
permitrootlogin without-password
allowusers alice
allowusers bob
kexalgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,ecdh-sha2-nistp256
authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2
hostkey /etc/ssh/ssh_host_rsa_key
hostkey /etc/ssh/ssh_host_ed25519_key
"""


def test_sshd_T_output_keeps_every_value_of_repeated_keywords():
    settings = sshd.parse_sshd_T(SSHD_T)
    assert settings["port"] == ["22", "2222"]
    assert sshd.first(settings, "passwordauthentication") == "yes"
    assert sshd.listed(settings, "allowusers") == ["alice", "bob"]
    assert sshd.listed(settings, "kexalgorithms")[-1] == "ecdh-sha2-nistp256"
    assert sshd.listed(settings, "authorizedkeysfile") == [".ssh/authorized_keys", ".ssh/authorized_keys2"]
    assert sshd.listed({"allowusers": ["none"]}, "allowusers") == []


def test_the_drop_in_has_only_modern_algorithms_and_no_way_in_but_keys():
    text = sshd.render_dropin(Hardening(port=22222, allow_users=("alice", "bob")))
    lines = text.splitlines()
    assert lines[0].startswith("# Written by nbremote")
    for expected in (
        "Port 22222",
        "AllowUsers alice bob",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "HostKey /etc/ssh/ssh_host_ed25519_key",
    ):
        assert expected in lines
    algorithms = " ".join(line for line in lines if line.split()[0] in ("KexAlgorithms", "Ciphers", "MACs"))
    for weak in ("nistp", "sha1", "cbc", "umac-64", "hmac-sha2-256,"):
        assert weak not in algorithms


def test_the_drop_in_leaves_out_algorithms_this_openssh_does_not_know():
    supported = {
        "kex": {"curve25519-sha256", "sntrup761x25519-sha512@openssh.com"},
        "cipher": {"chacha20-poly1305@openssh.com"},
        "mac": {"hmac-sha2-256-etm@openssh.com"},
    }
    text = sshd.render_dropin(Hardening(port=22, allow_users=("a",)), supported)
    assert "KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256\n" in text
    assert "Ciphers chacha20-poly1305@openssh.com\n" in text
    assert "MACs hmac-sha2-256-etm@openssh.com\n" in text


def test_mismatches_name_the_setting_that_won_over_ours():
    h = Hardening(port=22222, allow_users=("alice",))
    expected = sshd.expected_effective(h, {})
    effective = {key: [" ".join(value)] for key, value in expected.items()}
    assert sshd.mismatches(effective, expected) == []
    effective["passwordauthentication"] = ["yes"]
    effective["port"] = ["22", "22222"]
    assert sshd.mismatches(effective, expected) == [
        "port: wanted 22222, sshd uses 22 22222",
        "passwordauthentication: wanted no, sshd uses yes",
    ]


@pytest.mark.parametrize(
    "main, directory, on_top",
    [
        ("Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n", "/etc/ssh/sshd_config.d", True),
        ("# comment\n\ninclude sshd_config.d/*.conf\n", "/etc/ssh/sshd_config.d", True),
        ("Port 22\nInclude /etc/ssh/sshd_config.d/*.conf\n", "/etc/ssh/sshd_config.d", False),
        ("Include /etc/ssh/other.conf\nPort 22\n", None, False),
        ("Port 22\n", None, False),
    ],
)
def test_the_include_directory_and_whether_it_comes_first(main, directory, on_top):
    found, top = sshd.include_dir(main, Path("/etc/ssh"))
    assert (str(found) if found else None, top) == (directory, on_top)


def test_a_config_without_include_gets_one_at_the_top_and_keeps_every_byte_below():
    main = "Port 22\nPasswordAuthentication yes"
    new = sshd.with_include(main, Path("/etc/ssh/sshd_config.d"))
    assert new.endswith(main)
    assert sshd.include_dir(new, Path("/etc/ssh")) == (Path("/etc/ssh/sshd_config.d"), True)


@pytest.mark.parametrize(
    "port, message",
    [
        (80, "port 80 is below 1024 and not 22"),
        (0, "port 0 is not a TCP port"),
        (70000, "port 70000 is not a TCP port"),
        (8888, "port 8888 is already in use by jupyter-lab (pid 7)"),
    ],
)
def test_ports_sshd_cannot_take_are_refused_by_name(port, message):
    with pytest.raises(NbremoteError) as caught:
        sshd.check_port(port, [22], {8888: "jupyter-lab (pid 7)"})
    assert caught.value.message == message and caught.value.exit_code == ExitCode.USAGE


def test_ssh_and_sshds_own_port_are_fine():
    sshd.check_port(22, [22], {})
    sshd.check_port(2222, [2222], {2222: "sshd"})


def test_unknown_users_and_root_are_refused():
    with pytest.raises(NbremoteError, match="there is no user 'nbr-nobody-here'"):
        sshd.check_users(("nbr-nobody-here",))
    with pytest.raises(NbremoteError, match="root cannot be an allowed user"):
        sshd.check_users(("root",))


def test_the_diff_shows_a_new_file_and_a_changed_line():
    diff = sshd.unified_diff(Path("/etc/ssh/x.conf"), None, b"Port 2\n")
    assert diff.splitlines()[:2] == ["--- /dev/null", "+++ b/etc/ssh/x.conf"] and "+Port 2" in diff
    diff = sshd.unified_diff(Path("/etc/ssh/sshd_config"), b"a\nPort 1\n", b"a\nPort 2\n")
    assert "-Port 1" in diff and "+Port 2" in diff


class Recorder:
    def __init__(self, returncode: int = 0):
        self.calls: list[list[str]] = []
        self.returncode = returncode

    def __call__(self, argv, **kw):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(argv, self.returncode, "", "Job for ssh.service failed.")


def test_the_service_manager_seam_picks_systemd_and_calls_it(tmp_path):
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/ssh.service").touch()
    run = Recorder()
    service = sshd.service_for(Path("/run/sshd.pid"), "/usr/sbin/sshd", run, root=tmp_path)
    service.reload()
    service.start()
    assert run.calls == [["systemctl", "reload", "ssh"], ["systemctl", "start", "ssh"]]
    failing = sshd.service_for(Path("/run/sshd.pid"), "/usr/sbin/sshd", Recorder(1), root=tmp_path)
    with pytest.raises(NbremoteError, match="`systemctl reload ssh` failed"):
        failing.reload()


def test_the_seam_uses_an_init_script_then_the_pidfile(tmp_path):
    (tmp_path / "etc/init.d").mkdir(parents=True)
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/service").touch()
    (tmp_path / "etc/init.d/ssh").touch()
    run = Recorder()
    sshd.service_for(Path("/run/sshd.pid"), "/usr/sbin/sshd", run, root=tmp_path).reload()
    assert run.calls == [["service", "ssh", "reload"]]
    (tmp_path / "etc/init.d/ssh").unlink()
    bare = sshd.service_for(tmp_path / "sshd.pid", "/usr/sbin/sshd", run, root=tmp_path)
    assert isinstance(bare, sshd.PidFileSshd)
    with pytest.raises(NbremoteError, match="sshd is not running"):
        bare.reload()
