"""`nbremote server harden/restore` against the lab server's real sshd, started
from Debian's default configuration: what changes, what is refused, and that
every failure leaves /etc/ssh byte for byte as it was."""

from __future__ import annotations

import json
import re
import time

import netlab
import pytest
from netlab import ALICE, BOB, etc_ssh_digest
from serverlab import as_json, key_login, password_for, password_login, server_cli, server_nft, ssh_audit

NEW_PORT = 22222


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def harden(lab, state, *args):
    return server_cli(lab, "harden", "--port", str(NEW_PORT), "--allow-user", ALICE, "--yes", *args, state_dir=state)


def test_harden_turns_passwords_off_moves_the_port_and_satisfies_ssh_audit(lab, state):
    with password_for(lab, ALICE):
        assert password_login(lab, 22).returncode == 0, "password login should work on Debian's default"
        before = ssh_audit(lab, 22)
        done = harden(lab, state, "--json")
        result = as_json(done)
        assert result["verified_logins"] == [ALICE] and result["port"] == NEW_PORT
        refused = password_login(lab, NEW_PORT)
        assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr
    assert key_login(lab, NEW_PORT).returncode == 0
    assert key_login(lab, 22).returncode != 0, "sshd still listens on 22"
    bob = key_login(lab, NEW_PORT, host_alias=netlab.SERVER_BOB_HOST_ALIAS)
    assert bob.returncode != 0 and "Permission denied" in bob.stderr
    after = ssh_audit(lab, NEW_PORT)
    print(f"\nssh-audit before: {json.dumps(before)}\nssh-audit after:  {json.dumps(after)}")
    assert before["exit"] == 3 and len(before["fail"]) >= 3
    assert after["exit"] in (0, 2) and after["fail"] == []


def test_harden_twice_is_a_no_op_and_restore_puts_back_every_byte(lab, state):
    original = etc_ssh_digest(lab.server_etc_ssh)
    assert harden(lab, state).returncode == 0
    hardened = etc_ssh_digest(lab.server_etc_ssh)
    again = harden(lab, state)
    assert again.returncode == 0 and "already hardened" in again.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == hardened
    done = server_cli(lab, "restore", state_dir=state)
    assert done.returncode == 0, done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original
    assert key_login(lab, 22).returncode == 0
    nothing = server_cli(lab, "restore", state_dir=state)
    assert nothing.returncode == 0 and "nothing to restore" in nothing.stderr


def test_dry_run_prints_the_diff_and_changes_nothing(lab, state):
    original = etc_ssh_digest(lab.server_etc_ssh)
    done = harden(lab, state, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "+Port 22222" in done.stdout and "+PasswordAuthentication no" in done.stdout
    assert "b/etc/ssh/sshd_config.d/00-nbremote.conf" in done.stdout
    assert etc_ssh_digest(lab.server_etc_ssh) == original


def test_an_already_broken_config_is_refused_and_sshd_keeps_serving(lab, state):
    main = lab.server_etc_ssh / "sshd_config"
    main.write_text(main.read_text() + "ThisIsNotAnOption yes\n")
    broken = etc_ssh_digest(lab.server_etc_ssh)
    done = harden(lab, state)
    assert done.returncode == 1
    assert "already broken" in done.stderr and "ThisIsNotAnOption" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == broken
    assert key_login(lab, 22).returncode == 0


def test_a_user_without_an_authorized_key_is_not_locked_out(lab, state):
    (lab.user(ALICE).home / ".ssh" / "authorized_keys").unlink()
    original = etc_ssh_digest(lab.server_etc_ssh)
    done = harden(lab, state)
    assert done.returncode == 1
    assert f"refusing to turn password login off: {ALICE} would have no working key" in done.stderr
    assert "ssh-copy-id" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original


def test_a_group_writable_ssh_dir_counts_as_no_key(lab, state):
    ssh_dir = lab.user(ALICE).home / ".ssh"
    ssh_dir.chmod(0o770)
    try:
        done = harden(lab, state)
    finally:
        ssh_dir.chmod(0o700)  # the lab puts back what is inside ~/.ssh, not its mode
    assert done.returncode == 1
    assert f"{ssh_dir} is writable by others" in done.stderr


def test_a_failed_verification_login_restores_the_config_byte_for_byte(lab, state):
    original = etc_ssh_digest(lab.server_etc_ssh)
    keys = lab.user(ALICE).home / ".ssh" / "authorized_keys"
    keys_before = keys.read_bytes()
    # A firewall that rejects the new port even from the machine itself: sshd
    # accepts the config, but nobody could log in on that port.
    fault = (
        "table inet nbrtest {\n chain input {\n  type filter hook input priority -10;\n"
        f"  tcp dport {NEW_PORT} reject with tcp reset\n }}\n}}\n"
    )
    with server_nft(lab, fault):
        done = harden(lab, state)
    assert done.returncode == 1
    assert f"a fresh key login as {ALICE} on port {NEW_PORT} failed after the reload" in done.stderr
    assert "previous config was restored" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original
    assert keys.read_bytes() == keys_before
    assert key_login(lab, 22).returncode == 0


def test_bad_input_and_faults_name_the_problem_and_change_nothing(lab, state):
    original = etc_ssh_digest(lab.server_etc_ssh)
    low = server_cli(lab, "harden", "--port", "80", "--allow-user", ALICE, "--yes", state_dir=state)
    assert low.returncode == 2 and "port 80 is below 1024" in low.stderr
    nobody = server_cli(lab, "harden", "--allow-user", "nbr-nobody", "--yes", state_dir=state)
    assert nobody.returncode == 2 and "no user 'nbr-nobody'" in nobody.stderr
    listener = lab.server_popen(["python3", "-m", "http.server", "--bind", netlab.SERVER_ADDR, "8765"], user=BOB)
    try:
        for _ in range(50):
            if "8765" in lab.server_exec(["ss", "-Htln"]).stdout:
                break
            time.sleep(0.1)
        busy = server_cli(lab, "harden", "--port", "8765", "--allow-user", ALICE, "--yes", state_dir=state)
    finally:
        listener.kill()
        listener.wait()
    assert busy.returncode == 2 and "port 8765 is already in use by python3" in busy.stderr
    not_root = server_cli(lab, "harden", "--allow-user", ALICE, "--yes", state_dir=state, user=ALICE)
    assert not_root.returncode == 1 and "harden needs root" in not_root.stderr
    for command in ("restore", "init"):
        refused = server_cli(lab, command, *(["--yes"] if command == "init" else []), state_dir=state, user=ALICE)
        assert refused.returncode == 1 and f"{command} needs root" in refused.stderr, refused.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original


def test_sshd_not_installed_is_said_plainly(lab, state):
    original = etc_ssh_digest(lab.server_etc_ssh)
    hide = lab.server_exec(["mount", "--bind", "/dev/null", "/usr/sbin/sshd"])
    assert hide.returncode == 0, hide.stderr
    try:
        done = harden(lab, state)
    finally:
        assert lab.server_exec(["umount", "/usr/sbin/sshd"]).returncode == 0
    assert done.returncode == 1
    assert "sshd is not installed" in done.stderr and "apt-get install openssh-server" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original


def test_check_fails_on_debians_defaults_passes_sshd_after_harden_and_says_what_needs_root(lab, state):
    before = server_cli(lab, "check", "--json", "--timeout", "0.5", state_dir=state)
    assert before.returncode == 1
    rows = {r["name"]: r for r in json.loads(before.stdout)["checks"]}
    assert rows["passwordauthentication"]["status"] == "fail"
    # As root, without sudo; the program as root's PATH finds it (here `python -m nbremote`).
    assert re.match(r"(\S+ -m )?\S*nbremote server harden", rows["passwordauthentication"]["fix"])
    assert rows["macs"]["status"] == "warn" and "hmac-sha1" in rows["macs"]["detail"]
    assert harden(lab, state).returncode == 0
    after = json.loads(server_cli(lab, "check", "--json", "--timeout", "0.5", state_dir=state).stdout)
    sshd_rows = {r["name"]: r["status"] for r in after["checks"]}
    for name in (
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "permitrootlogin",
        "allowusers",
        "kexalgorithms",
        "ciphers",
        "macs",
        "host keys",
        "port",
    ):
        assert sshd_rows[name] == "pass", name
    user = server_cli(lab, "check", "--json", "--timeout", "0.5", state_dir=state, user=ALICE)
    needs_root = [r["name"] for r in json.loads(user.stdout)["checks"] if r["status"] == "needs root"]
    assert needs_root == ["sshd settings", "firewall"]
