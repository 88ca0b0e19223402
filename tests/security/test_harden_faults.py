"""Guarantee 6: server changes are reversible and never leave sshd down.

`harden` is killed (SIGKILL, nothing to catch) at each step: after the backup,
after the write, after validation, after the reload, during the verification
login (its throwaway key in authorized_keys), after the verification, and in
the middle of its own rollback. Each time, once its guard (server/guard.py)
has run, sshd serves the old config and the user's key login works from the
laptop, authorized_keys is back byte for byte, nothing of the run is left
behind, and `restore` gives back the original /etc/ssh byte for byte.

harden runs in the server's namespaces through the same calls as the CLI
(`Sshd.plan`, then `apply_harden`, which moves an active firewall along with
sshd), with a checkpoint callback that stops at one step and says so: the test
kills it exactly there.
"""

from __future__ import annotations

import glob
import os
import selectors
import signal
import subprocess

import pytest
from netlab import ALICE, LAB_PYTHON, etc_ssh_digest
from serverlab import key_login, private_etc, server_cli, server_nft, sshd_listening_ports, tcp_open

NEW_PORT = 22222

DRIVER = """
import sys, time
from nbremote.console import Console
from nbremote.server.steps import apply_harden
from nbremote.server.sshd import Sshd

pause_at, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def checkpoint(name):
    if name == pause_at:
        print("paused at", name, flush=True)
        time.sleep(600)

sshd = Sshd()
apply_harden(Console.for_terminal(), sshd, sshd.plan(port=port, allow_users=(user,)), checkpoint=checkpoint)
print("finished", flush=True)
"""


def harden_killed_at(lab, step: str, port: int = NEW_PORT) -> str:
    """Run harden until it reaches step, SIGKILL it there; return what its guard said
    (the guard inherits harden's stderr, so its end of file means the guard is done)."""
    proc = lab.server_popen(
        [str(LAB_PYTHON), "-c", DRIVER, step, str(port), ALICE],
        env=lab.nbremote_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(60), "harden never reached the step"
        line = proc.stdout.readline()
        assert line == f"paused at {step}\n", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        _, guard_said = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return guard_said


def no_guard_left(lab) -> bool:
    return "nbremote.server.guard" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.fixture
def alice_keys(lab):
    path = lab.user(ALICE).home / ".ssh" / "authorized_keys"
    return path, path.read_bytes()


@pytest.mark.parametrize("step", ["backup", "write", "validate", "reload", "verify", "verified"])
def test_killing_harden_at_any_step_leaves_sshd_serving_the_old_config(lab, tmp_path, alice_keys, step):
    original = etc_ssh_digest(lab.server_etc_ssh)
    keys, keys_before = alice_keys
    key_dirs = set(glob.glob("/tmp/nbremote-verify-*"))

    said = harden_killed_at(lab, step)

    assert "nbremote server harden was interrupted" in said and "reloaded sshd" in said, said
    assert no_guard_left(lab)
    assert sshd_listening_ports(lab) == {22}
    assert key_login(lab, 22).returncode == 0
    assert keys.read_bytes() == keys_before
    assert set(glob.glob("/tmp/nbremote-verify-*")) == key_dirs, "the verification key was left behind"
    done = server_cli(lab, "restore", state_dir=tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == original
    assert key_login(lab, 22).returncode == 0


def test_killing_harden_in_its_own_rollback_still_puts_sshd_back(lab, tmp_path, alice_keys):
    """The verification login fails (the new port is rejected), harden puts the
    files back, and is killed before it reloads sshd with them."""
    original = etc_ssh_digest(lab.server_etc_ssh)
    keys, keys_before = alice_keys
    fault = (
        "table inet nbrtest {\n chain input {\n  type filter hook input priority -10;\n"
        f"  tcp dport {NEW_PORT} reject with tcp reset\n }}\n}}\n"
    )
    with server_nft(lab, fault):
        said = harden_killed_at(lab, "rollback")
    assert "reloaded sshd" in said, said
    assert sshd_listening_ports(lab) == {22}
    assert key_login(lab, 22).returncode == 0
    assert keys.read_bytes() == keys_before
    assert server_cli(lab, "restore", state_dir=tmp_path / "state").returncode == 0
    assert etc_ssh_digest(lab.server_etc_ssh) == original


def test_a_killed_second_harden_goes_back_to_the_first_and_restore_to_the_original(lab, tmp_path):
    """A second run (another port) killed after its reload: the guard puts back
    what this run changed, not the first run's backup."""
    state = tmp_path / "state"
    original = etc_ssh_digest(lab.server_etc_ssh)
    first = server_cli(lab, "harden", "--port", str(NEW_PORT), "--allow-user", ALICE, "--yes", state_dir=state)
    assert first.returncode == 0, first.stderr
    hardened = etc_ssh_digest(lab.server_etc_ssh)

    said = harden_killed_at(lab, "reload", port=2222)

    assert "reloaded sshd" in said, said
    assert etc_ssh_digest(lab.server_etc_ssh) == hardened
    assert sshd_listening_ports(lab) == {NEW_PORT}
    assert key_login(lab, NEW_PORT).returncode == 0
    assert server_cli(lab, "restore", state_dir=state).returncode == 0
    assert etc_ssh_digest(lab.server_etc_ssh) == original
    assert key_login(lab, 22).returncode == 0


def test_a_killed_harden_sets_a_firewall_it_was_moving_back_to_the_old_port(lab, tmp_path):
    """Our firewall allows 22; harden lets 22222 in too before the reload and is killed
    after it: sshd goes back to 22 and the firewall to 22 alone, files and rules as before."""
    state = tmp_path / "state"
    with private_etc(lab, tmp_path) as etc:
        try:
            assert server_cli(lab, "firewall", "--yes", state_dir=state).returncode == 0
            conf = (etc / "nftables.conf").read_bytes()
            table = lab.server_exec(["nft", "list", "table", "inet", "nbremote"]).stdout
            assert "tcp dport 22 accept" in table

            said = harden_killed_at(lab, "reload")

            assert "reloaded sshd" in said and "the firewall allows 22/tcp again, and no other port" in said, said
            assert lab.server_exec(["nft", "list", "table", "inet", "nbremote"]).stdout == table
            assert (etc / "nftables.conf").read_bytes() == conf
            assert sshd_listening_ports(lab) == {22} and key_login(lab, 22).returncode == 0
            assert not tcp_open(lab, NEW_PORT)
        finally:
            server_cli(lab, "firewall", "--remove", state_dir=state)
            lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])
