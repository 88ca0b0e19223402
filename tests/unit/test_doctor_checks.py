"""nbremote doctor: each check passing and failing on real files in this test's HOME.

`ssh -V`, `ssh -G`, `ssh-keygen` are the real OpenSSH tools; hosts are tried
against a closed port on 127.0.0.1 here (the lab test has a live server).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from nbremote import doctor, profiles, sshfiles
from nbremote.addresses import parse_address
from nbremote.errors import ExitCode
from nbremote.profiles import Profile
from nbremote.verdicts import FAIL, PASS, WARN

from clirun import run_main


def make_key(home: Path, name: str = "id_ed25519") -> Path:
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    key = ssh / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def profile(name: str, *addresses: str, key: str | None = None) -> Profile:
    return Profile(name=name, addresses=tuple(parse_address(a) for a in addresses), key=key)


@pytest.fixture(autouse=True)
def no_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(autouse=True)
def runtime(isolated, monkeypatch):
    """A runtime dir short enough for control sockets (pytest's own paths are not)."""
    folder = Path(tempfile.mkdtemp(prefix="nbr-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder)


# --- openssh ------------------------------------------------------------------------------


def test_the_installed_openssh_passes():
    row = doctor.openssh_check(doctor.ssh_version())
    assert row.status == PASS
    assert row.detail.startswith("OpenSSH_")


def test_no_ssh_on_path_fails_with_the_package_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    row = doctor.openssh_check(doctor.ssh_version())
    assert (row.status, row.detail) == (FAIL, "no ssh on PATH")
    assert "openssh-client" in row.fix


@pytest.mark.parametrize(
    "text, detail",
    [
        (
            "OpenSSH_7.2p2 Ubuntu-4ubuntu2.10, OpenSSL 1.0.2g  1 Mar 2016",
            "OpenSSH_7.2p2 Ubuntu-4ubuntu2.10, OpenSSL 1.0.2g  1 Mar 2016: older than 7.3",
        ),
        ("Sun_SSH_1.1.5, SSH protocols 1.5/2.0", "ssh is not OpenSSH (Sun_SSH_1.1.5, SSH protocols 1.5/2.0)"),
    ],
)
def test_an_old_or_foreign_ssh_fails(text, detail):
    row = doctor.openssh_check(text)
    assert (row.status, row.detail) == (FAIL, detail)
    assert "7.3 or newer" in row.fix


def test_openssh_for_windows_and_7_3_pass():
    assert doctor.openssh_check("OpenSSH_for_Windows_8.6p1, LibreSSL 3.4.3").status == PASS
    assert doctor.openssh_check("OpenSSH_7.3p1, OpenSSL 1.0.2j").status == PASS


# --- multiplexing ---------------------------------------------------------------------------


def test_control_sockets_in_the_private_runtime_dir_pass(runtime):
    row = doctor.multiplexing_check()
    assert row.status == PASS
    folder = runtime / "nbremote"
    assert row.detail == f"control sockets work in {folder} (0700)"
    assert list(folder.iterdir()) == []  # the probe socket is gone


def test_a_runtime_dir_too_deep_for_a_socket_fails(isolated, monkeypatch):
    deep = isolated.root / ("d" * 80)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    row = doctor.multiplexing_check()
    assert row.status == FAIL
    assert (
        f"control sockets in {deep}/nbremote need" in row.detail
        and f"a Unix socket path has {doctor.SOCKET_PATH_MAX}" in row.detail
    )
    assert row.fix == "set XDG_RUNTIME_DIR to a shorter directory of yours"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_runtime_dir_of_another_user_fails(runtime):
    folder = runtime / "nbremote"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    row = doctor.multiplexing_check()
    assert (row.status, row.detail) == (FAIL, f"{folder} belongs to another user")
    assert "XDG_RUNTIME_DIR" in row.fix


# --- keys -----------------------------------------------------------------------------------


def test_a_key_pair_passes(isolated):
    key = make_key(isolated.home)
    assert [(r.name, r.status, r.detail) for r in doctor.key_checks({})] == [("key", PASS, str(key))]


def test_a_key_others_can_read_fails_with_chmod(isolated):
    key = make_key(isolated.home)
    key.chmod(0o644)
    [row] = doctor.key_checks({})
    assert row.status == FAIL
    assert row.detail == f"{key} can be read by others (mode 0644): ssh refuses to use it"
    assert row.fix == f"chmod 600 {key}"


def test_no_key_warns_before_the_first_profile_and_fails_after(isolated):
    [row] = doctor.key_checks({})
    assert row.status == WARN
    assert row.detail.startswith(f"no key pair in {isolated.home}/.ssh")
    [row] = doctor.key_checks({"gpubox": profile("gpubox", "10.0.0.1")})
    assert row.status == FAIL
    assert "`nbremote add NAME` makes one" in row.fix


def test_a_profile_key_that_is_gone_fails_naming_the_profile(isolated):
    make_key(isolated.home)
    gone = isolated.home / "keys" / "work"
    [row] = doctor.key_checks({"gpubox": profile("gpubox", "10.0.0.1", key=str(gone))})
    assert (row.name, row.status, row.detail) == ("key", FAIL, f"{gone} is missing (used by gpubox)")
    assert "`nbremote remove gpubox` then `nbremote add gpubox`" in row.fix


def test_one_row_per_key_file_with_the_profiles_using_it(isolated):
    key = make_key(isolated.home)
    other = make_key(isolated.home, "id_work")
    rows = doctor.key_checks(
        {
            "a": profile("a", "10.0.0.1", key=str(key)),
            "b": profile("b", "10.0.0.2", key=str(key)),
            "c": profile("c", "10.0.0.3", key=str(other)),
        }
    )
    assert [(r.status, r.detail) for r in rows] == [(PASS, f"{key} (used by a, b)"), (PASS, f"{other} (used by c)")]
    # A profile without its own key logs in with the default one: that is checked too.
    rows = doctor.key_checks({"a": profile("a", "10.0.0.1", key=str(other)), "d": profile("d", "10.0.0.4")})
    assert [r.detail for r in rows] == [f"{other} (used by a)", str(key)]


# --- the profile file -------------------------------------------------------------------------


def test_valid_profiles_pass(isolated):
    profiles.save({"gpubox": profile("gpubox", "10.0.0.1")})
    row, loaded = doctor.profiles_check()
    assert (row.status, row.detail) == (PASS, f"1 host profile in {profiles.profiles_path()}")
    assert list(loaded) == ["gpubox"]


def test_no_profile_file_warns_with_the_add_command(isolated):
    row, loaded = doctor.profiles_check()
    assert row.status == WARN and loaded == {}
    assert row.fix.startswith("nbremote add NAME")


@pytest.mark.parametrize(
    "text, where, says",
    [
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\nuser = \n', 3, "Invalid value"),
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\n\n[hosts.gpubox.up]\nmode = "vim"\n', 5, "mode 'vim'"),
        ('[hosts.gpubox]\naddresses = ["10.0.0.1"]\nprot = 22\n', 3, "unknown key 'prot'"),
    ],
)
def test_a_broken_profile_file_fails_with_file_and_line(isolated, text, where, says):
    path = profiles.profiles_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    row, loaded = doctor.profiles_check()
    assert row.status == FAIL and loaded == {}
    assert row.detail.startswith(f"{path}:{where}: ")
    assert says in row.detail
    assert row.fix


# --- the Include in ~/.ssh/config ---------------------------------------------------------------


@pytest.fixture
def written(isolated):
    """A profile as `add` leaves it: our ssh_config, and the Include on top of the user's file."""
    all_profiles = {"gpubox": profile("gpubox", "10.0.0.1")}
    profiles.save(all_profiles)
    sshfiles.write_files(all_profiles)
    (isolated.home / ".ssh").mkdir()
    sshfiles.user_config_path().write_text("Host server\n    HostName 10.0.0.9\n")
    sshfiles.ensure_include()
    return all_profiles


def test_the_include_on_top_passes_and_ssh_reads_the_entry(written):
    row = doctor.include_check(written, ssh_works=True)
    assert (row.status, row.detail) == (PASS, f"{sshfiles.user_config_path()}:1 includes {sshfiles.our_config_path()}")


def test_a_missing_include_fails_with_the_line_to_add(written):
    config = sshfiles.user_config_path()
    config.write_text("Host server\n    HostName 10.0.0.9\n")
    row = doctor.include_check(written, ssh_works=True)
    assert row.status == FAIL
    assert row.detail.startswith(f"{config} does not include {sshfiles.our_config_path()}")
    assert row.fix == f"put this line at the top of {config}: {sshfiles.include_line()}"


def test_an_include_inside_a_host_block_fails(written):
    config = sshfiles.user_config_path()
    config.write_text(f"Host server\n    HostName 10.0.0.9\n{sshfiles.include_line()}\n")
    row = doctor.include_check(written, ssh_works=True)
    assert row.status == FAIL
    assert row.detail == (
        f"the Include at {config}:3 is inside the block that starts at line 1: it applies only to that block"
    )
    assert row.fix == f"move `{sshfiles.include_line()}` to the top of {config}"


def test_a_profile_missing_from_our_ssh_config_fails(written):
    # Added to hosts.toml by hand: the profile works for nbremote, but plain ssh does not know it.
    profiles.save({**written, "handmade": profile("handmade", "10.0.0.2")})
    row = doctor.include_check(profiles.load(), ssh_works=True)
    assert row.status == FAIL
    assert row.detail.startswith("plain `ssh handmade` does not use nbremote's entry")
    assert row.fix == "`nbremote remove handmade` then `nbremote add handmade` writes it again"


def test_our_ssh_config_gone_fails(written):
    sshfiles.our_config_path().unlink()
    row = doctor.include_check(written, ssh_works=True)
    assert (row.status, row.detail) == (FAIL, f"{sshfiles.our_config_path()} is missing")


def test_without_profiles_there_is_nothing_to_include(isolated):
    assert doctor.include_check({}, ssh_works=True).status == PASS


# --- hosts ----------------------------------------------------------------------------------------


def test_an_unreachable_host_fails_with_the_reason_and_the_fix(isolated, runtime):
    port = closed_port()
    profiles.save({"deadbox": profile("deadbox", f"127.0.0.1:{port}")})
    rows = doctor.host_checks("deadbox", timeout=3)
    assert [(r.name, r.status) for r in rows] == [("deadbox reach", FAIL)]
    assert rows[0].detail.startswith("cannot reach deadbox; tried 127.0.0.1:" + str(port))
    assert "connection refused" in rows[0].detail
    assert "sshd runs" in rows[0].fix
    assert list((runtime / "nbremote").iterdir()) == []  # no master left behind


def test_every_host_asked_for_gets_its_row_in_order(isolated):
    port = closed_port()
    names = [f"box{i}" for i in range(4)]
    profiles.save({name: profile(name, f"127.0.0.1:{port}") for name in names})
    rows = doctor.all_host_checks(names, timeout=3)
    assert [r.name for r in rows] == [f"{name} reach" for name in names]
    assert {r.status for r in rows} == {FAIL}


def test_a_bad_host_name_is_a_failed_row_naming_it(isolated, no_processes):
    [row] = doctor.host_checks("-oProxyCommand=touch /tmp/x", timeout=3)
    assert row.status == FAIL
    assert row.detail == "'-oProxyCommand=touch /tmp/x' is not a host"


# --- the command ------------------------------------------------------------------------------------


def test_doctor_json_lists_every_check_and_exits_1_on_a_failure(isolated, capsys):
    make_key(isolated.home)
    profiles.save({"deadbox": profile("deadbox", f"127.0.0.1:{closed_port()}")})
    code, out, err = run_main(capsys, "doctor", "--json", "--timeout", "3")
    assert code == ExitCode.ERROR
    doc = json.loads(out)
    rows = {r["name"]: r for r in doc["checks"]}
    assert [r["name"] for r in doc["checks"]] == [
        "openssh",
        "multiplexing",
        "key",
        "profiles",
        "ssh config",
        "deadbox reach",
    ]
    assert rows["deadbox reach"]["status"] == "fail" and rows["deadbox reach"]["fix"]
    assert rows["ssh config"]["status"] == "fail"  # written by hand: no Include, no Host block
    assert doc["summary"] == {"pass": 4, "warn": 0, "fail": 2, "needs root": 0}, doc


def test_doctor_passes_on_a_fresh_laptop_with_a_key(isolated, capsys):
    key = make_key(isolated.home)
    code, out, err = run_main(capsys, "doctor")
    assert code == 0, out + err
    assert f"✓ pass       key           {key}" in out
    assert "! warn       profiles      no host profiles yet" in out
    assert "fix: nbremote add NAME --address ADDR" in out
    assert out.rstrip().endswith("4 pass, 1 warn, 0 fail")


def test_doctor_names_only_the_hosts_asked_for(isolated, capsys):
    make_key(isolated.home)
    port = closed_port()
    profiles.save({"box1": profile("box1", f"127.0.0.1:{port}"), "box2": profile("box2", f"127.0.0.1:{port}")})
    started = time.monotonic()
    code, out, err = run_main(capsys, "doctor", "--json", "box2")
    assert code == ExitCode.ERROR
    assert [r["name"] for r in json.loads(out)["checks"] if "reach" in r["name"]] == ["box2 reach"]
    assert time.monotonic() - started < 10
