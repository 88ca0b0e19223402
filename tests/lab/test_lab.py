"""Tests of the lab itself: if these fail, no other lab test means anything."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

import netlab
from netlab import ALICE, BOB, LAPTOP_ADDR, LAPTOP_USER, SERVER_ADDR


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {e["name"] for e in json.loads(out or "[]")}


def _lab_blackholes() -> set[tuple[str, int]]:
    # Only the lab's own (metric 0): other test modules may add and remove
    # guards of their own at other metrics while this runs.
    return {(dst, m) for dst, m in netlab.root_blackholes() if m == 0 and dst in (netlab.LAB_NET, netlab.INTERNET_NET)}


def _host_ed25519() -> str:
    return Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]


@pytest.mark.lab_fresh
def test_build_and_teardown_leave_host_untouched(build_lab):
    etc_before = netlab.etc_ssh_digest()
    lab = build_lab()
    assert lab.timings["build"] < 10, f"build too slow: {lab.timings}"

    names = {lab.laptop_ns, lab.server_ns}
    assert names <= _netns_names()
    uids = {pwd.getpwnam(u).pw_uid for u in netlab.LAB_USERS}
    # Something of every kind that teardown must remove: a server-side user
    # process, a file written into the server's /etc/ssh.
    assert lab.ssh("tmux", "new", "-d", "-s", "keep", "sleep", "300").returncode == 0
    r = lab.server_exec(["sh", "-c", "echo '# lab only' > /etc/ssh/sshd_config.d/zz-lab.conf"])
    assert r.returncode == 0, r.stderr
    assert not Path("/etc/ssh/sshd_config.d/zz-lab.conf").exists()
    mnt, src = lab.server_mnt, lab.src_copy

    t0 = time.monotonic()
    assert lab.teardown() == []
    teardown_s = time.monotonic() - t0
    assert lab.teardown() == []  # idempotent
    assert teardown_s < 10

    assert netlab.etc_ssh_digest() == etc_before, "the host's /etc/ssh changed"
    assert not names & _netns_names()
    assert not mnt.exists()
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()
    assert not src.exists()
    # Users and routes are machine-wide: another process's lab may take the
    # lock the moment ours is gone and make them again.
    with netlab.lab_lock():
        for user in netlab.LAB_USERS:
            with pytest.raises(KeyError):
                pwd.getpwnam(user)
            assert not Path("/home", user).exists()
        stray = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if (netlab._proc_uid_and_state(pid)[0] or set()) & uids and netlab._proc_uid_and_state(pid)[1] != "Z"
        ]
        assert stray == []
        assert _lab_blackholes() == set()
        assert not any(Path(f"/tmp/{p.format(uid=uid)}").exists() for uid in uids for p in netlab.USER_TMP_PATHS)


def test_island(lab):
    lab.assert_island()
    # The kernel answers a route lookup for a blackholed destination with
    # EINVAL; no packet is sent, unlike a connect() would.
    for addr in (SERVER_ADDR, LAPTOP_ADDR, "11.22.33.1"):
        r = subprocess.run(["ip", "route", "get", addr], capture_output=True, text=True)
        assert r.returncode != 0 and "Invalid argument" in r.stderr, f"root namespace would route {addr}: {r.stdout}"
    assert _lab_blackholes() == {(netlab.LAB_NET, 0), (netlab.INTERNET_NET, 0)}


def test_laptop_is_inside_the_lab(lab):
    r = lab.laptop_exec(["ip", "-4", "-o", "addr", "show"])
    assert r.returncode == 0, r.stderr
    addrs = {line.split()[3] for line in r.stdout.splitlines()}
    assert addrs == {"127.0.0.1/8", f"{LAPTOP_ADDR}/24"}
    r = lab.laptop_exec(["ip", "route", "show", "default"])
    assert r.stdout.strip() == "", "the laptop must have no way out of the lab"
    assert lab.laptop_exec(["id", "-un"]).stdout.strip() == LAPTOP_USER


def test_ssh_key_login_reaches_the_server(lab):
    r = lab.ssh("true")
    assert r.returncode == 0, r.stderr
    r = lab.ssh("hostname", "-I")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [SERVER_ADDR]
    assert lab.ssh("id", "-un").stdout.strip() == ALICE
    assert lab.ssh("id", "-un", host="server-bob").stdout.strip() == BOB
    log = lab.sshd_log.read_text()
    assert f"Accepted publickey for {ALICE} from {LAPTOP_ADDR}" in log
    assert f"Accepted publickey for {BOB} from {LAPTOP_ADDR}" in log


def test_server_host_key_is_pinned_not_learnt(lab):
    # StrictHostKeyChecking=yes fails on an unknown key, so success means the
    # known_hosts entry written at build time matches the lab server's key.
    r = lab.laptop_exec(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "server", "true"])
    assert r.returncode == 0, r.stderr


def test_unknown_user_is_refused(lab):
    r = lab.laptop_exec(["ssh", "-o", "BatchMode=yes", "nosuchuser@server", "true"])
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
    deadline = time.monotonic() + 5
    while "Invalid user nosuchuser" not in lab.sshd_log.read_text():
        assert time.monotonic() < deadline, "sshd did not log the invalid user"
        time.sleep(0.05)


def test_jupyter_only_on_alices_login_path(lab):
    jupyter = str(netlab.LAB_VENV / "bin" / "jupyter")
    r = lab.server_exec(["bash", "-lc", "command -v jupyter"], user=ALICE)
    assert r.stdout.strip() == jupyter, r.stderr
    r = lab.ssh("bash", "-lc", "'command -v jupyter'")
    assert r.stdout.strip() == jupyter, r.stderr
    # Debian's .bashrc stops early for non-interactive shells: a plain
    # `ssh server cmd` does not see the login PATH, as on real servers.
    assert lab.ssh("command -v jupyter").returncode != 0
    r = lab.ssh("bash", "-lc", "'command -v jupyter'", host="server-bob")
    assert r.returncode != 0 and r.stdout.strip() == ""


def test_tmux_started_over_ssh_survives_the_session(lab):
    r = lab.ssh("tmux", "new", "-d", "-s", "t", "sleep", "100")
    assert r.returncode == 0, r.stderr
    r = lab.ssh("tmux", "has", "-t", "t")
    assert r.returncode == 0, r.stderr
    # ... and it lives on the server, in alice's tmux socket.
    r = lab.server_exec(["tmux", "ls", "-F", "#{session_name}"], user=ALICE)
    assert r.stdout.split() == ["t"]


def _auth_methods(lab) -> str:
    """What sshd offers, e.g. "publickey,password"; waits out a reload."""
    deadline = time.monotonic() + 5
    while True:
        r = lab.laptop_exec(["ssh", "-o", "BatchMode=yes", "-o", "PreferredAuthentications=none", "server", "true"])
        assert r.returncode == 255
        # sshd re-execs on SIGHUP and refuses connections for a moment.
        if "Connection refused" not in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # "nbr-alice@192.168.77.2: Permission denied (publickey,password)."
    assert "Permission denied (" in r.stderr, r.stderr
    return r.stderr.rsplit("(", 1)[1].split(")")[0]


def test_server_etc_ssh_is_private_and_reloadable(lab):
    srv_key = lab.server_exec(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[1]
    assert srv_key != _host_ed25519()
    etc_before = netlab.etc_ssh_digest()
    pid = lab.sshd_pid()
    assert pid and lab.server_exec(["cat", "/run/sshd.pid"]).stdout.strip() == str(pid)

    assert _auth_methods(lab) == "publickey,password"
    r = lab.server_exec(
        [
            "sh",
            "-c",
            "echo 'PasswordAuthentication no' > /etc/ssh/sshd_config.d/10-nopw.conf && kill -HUP $(cat /run/sshd.pid)",
        ]
    )
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 5
    while _auth_methods(lab) != "publickey":
        assert time.monotonic() < deadline, "sshd did not pick up the drop-in"
        time.sleep(0.1)
    assert lab.sshd_pid() == pid  # reloaded, not restarted
    assert netlab.etc_ssh_digest() == etc_before

    lab.cleanup_between_tests()
    assert not (lab.server_etc_ssh / "sshd_config.d" / "10-nopw.conf").exists()
    assert _auth_methods(lab) == "publickey,password"


def test_cleanup_between_tests_resets_users_not_sshd(lab):
    alice = lab.user(ALICE)
    laptop = lab.user(LAPTOP_USER)
    assert lab.ssh("tmux", "new", "-d", "-s", "t", "sleep", "100").returncode == 0
    master = lab.laptop_popen(
        ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=yes", "-o", "ControlPath=~/.ssh/cm-%C", "-N", "server"]
    )
    lab.laptop_exec(["mkdir", "-m", "700", f"/tmp/nbremote-{laptop.uid}"])
    state = alice.home / ".local/state/nbremote"
    lab.server_exec(["mkdir", "-p", str(state), str(alice.home / ".local/share/jupyter/runtime")], user=ALICE)
    with open(laptop.home / ".ssh/config", "a") as f:
        f.write("\nHost added-by-test\n    HostName 192.168.77.99\n")
    deadline = time.monotonic() + 5
    while not list((laptop.home / ".ssh").glob("cm-*")):
        assert time.monotonic() < deadline, "ControlMaster socket never appeared"
        time.sleep(0.05)
    sshd = lab.sshd_pid()

    lab.cleanup_between_tests()

    assert master.wait(timeout=5) is not None
    assert netlab._uid_pids(alice.uid) == [] and netlab._uid_pids(laptop.uid) == []
    assert not state.exists()
    assert not (alice.home / ".local/share/jupyter/runtime").exists()
    assert not Path(f"/tmp/tmux-{alice.uid}").exists()
    assert not Path(f"/tmp/nbremote-{laptop.uid}").exists()
    assert not list((laptop.home / ".ssh").glob("cm-*"))
    assert "added-by-test" not in (laptop.home / ".ssh/config").read_text()
    assert lab.sshd_pid() == sshd
    assert lab.ssh("true").returncode == 0
    assert lab.ssh("tmux", "has", "-t", "t").returncode != 0


def test_sshd_is_restarted_if_a_test_killed_it(lab):
    os.kill(lab.sshd_pid(), 9)
    deadline = time.monotonic() + 5
    while lab.sshd_pid() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert lab.ssh("true").returncode == 255
    lab.cleanup_between_tests()
    assert lab.ssh("true").returncode == 0


def test_laptop_runs_the_package_from_the_src_copy(lab):
    r = lab.laptop_exec(
        [str(netlab.LAB_PYTHON), "-c", "import nbremote; print(nbremote.__file__)"], env=lab.nbremote_env()
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(lab.src_copy))
    # The laptop user can't write it (root-owned copy), nor read /root.
    assert lab.laptop_exec(["touch", str(lab.src_copy / "x")]).returncode != 0
    # It has its bytecode, as an installed package has: each command would compile its imports otherwise.
    r = lab.laptop_exec(
        [str(netlab.LAB_PYTHON), "-c", "import os, nbremote.cli as m; print(os.path.isfile(m.__cached__))"],
        env=lab.nbremote_env(),
    )
    assert r.stdout.strip() == "True", r.stderr


def test_kill_sshd_kills_the_servers_sshd_and_no_other(lab, tmp_path):
    # A process named sshd outside the lab, as this machine's own sshd would be.
    bystander_exe = tmp_path / "sshd"
    bystander_exe.write_bytes(Path("/bin/sleep").read_bytes())
    bystander_exe.chmod(0o755)
    bystander = subprocess.Popen([str(bystander_exe), "60"])
    try:
        assert lab.ssh("true").returncode == 0
        assert lab.kill_sshd() >= 1
        assert lab.sshd_pid() is None
        assert lab.ssh("true").returncode == 255
        assert bystander.poll() is None, "an sshd outside the server's namespace was killed"
    finally:
        bystander.kill()
        bystander.wait()
    lab.ensure_sshd()
    assert lab.ssh("true").returncode == 0
