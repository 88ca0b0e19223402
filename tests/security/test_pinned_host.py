"""Guarantee 2: the laptop trusts only the pinned host.

The profile pins the server's ed25519 key (from its invite line). The server's
key is then swapped, as a man in the middle on the same address would present
another key. Every command must stop before authentication: sshd's own log
shows the connection but no user name, no key or password tried, and a marker
command never runs. The same log shows all of that for a login with the right
key, so the check would see an attempt if one were made.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from netlab import ALICE, LAPTOP_ADDR, LAPTOP_USER, SERVER_ADDR


def fingerprint(lab) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()[1]


def swap_host_key(lab) -> None:
    for suffix in ("", ".pub"):
        (lab.server_etc_ssh / f"ssh_host_ed25519_key{suffix}").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key")],
        check=True,
    )
    lab.reload_sshd()


class SshdLog:
    def __init__(self, lab):
        self.path = lab.sshd_log
        self.mark()

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def mark_when_quiet(self, quiet: float = 0.5, limit: float = 5.0) -> None:
        """Mark once sshd has stopped writing: the sessions just killed log their
        close (with the user's name) a moment later."""
        deadline = time.monotonic() + limit
        size = self.path.stat().st_size
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.path.stat().st_size
            if now == size:
                break
            size = now
        self.offset = size

    def new_lines(self) -> list[str]:
        with open(self.path, errors="replace") as handle:
            handle.seek(self.offset)
            return handle.read().splitlines()


@pytest.fixture
def pinned(lab):
    line = f"nbr1:{ALICE}@{SERVER_ADDR}:22#{fingerprint(lab)}"
    done = lab.nbremote("add", "gpubox", "--invite", line)
    assert done.returncode == 0, done.stderr
    yield "gpubox"
    subprocess.run(["rm", "-rf", str(lab.user(LAPTOP_USER).home / ".config" / "nbremote")], check=True)


def marker(lab, name: str):
    return lab.user(ALICE).home / name


def test_a_swapped_host_key_stops_before_any_login_attempt(lab, pinned, alice_password):
    log = SshdLog(lab)
    done = lab.nbremote("ssh", pinned, "--", "touch", "control-marker")
    assert done.returncode == 0, done.stderr
    assert marker(lab, "control-marker").exists()
    assert any(f"Accepted publickey for {ALICE}" in line for line in log.new_lines()), log.new_lines()

    # The master that login left behind talks to the real server: end it, as a laptop
    # that moved to another network would have lost it.
    lab.kill_user_processes(LAPTOP_USER)
    lab.kill_user_processes(ALICE)
    old = fingerprint(lab)
    swap_host_key(lab)
    new = fingerprint(lab)
    log.mark_when_quiet()
    # sshpass stands ready to type alice's password should ssh ever ask for it.
    attempts = {
        "ssh": ["sshpass", "-p", alice_password, *lab.nbremote_argv("ssh", pinned, "--", "touch", "mitm-marker")],
        "up": ["sshpass", "-p", alice_password, *lab.nbremote_argv("up", pinned, "--no-browser", "--detach")],
        "ls": lab.nbremote_argv("ls", pinned),
    }
    for what, argv in attempts.items():
        done = lab.laptop_exec(argv, env=lab.nbremote_env(), timeout=60)
        assert done.returncode == 5, (what, done.stderr)
        assert "has changed: refusing to connect" in done.stderr, (what, done.stderr)
        assert f"expected {old}" in done.stderr and f"received {new}" in done.stderr, (what, done.stderr)

    assert not marker(lab, "mitm-marker").exists()
    lines = log.new_lines()
    assert any(LAPTOP_ADDR in line for line in lines), lines  # the connections did reach sshd
    for line in lines:
        assert ALICE not in line, line  # no user name: no authentication request at all
        for word in ("Accepted", "Failed", "Postponed", "session opened", "Invalid user"):
            assert word not in line, line
    # Nothing ran on the server for alice either: no command, no agent, no Jupyter state.
    assert not lab.server_exec(["pgrep", "-u", ALICE, "-f", "touch|python|jupyter|sh -c"]).stdout.strip(), (
        lab.server_exec(["ps", "-u", ALICE, "-o", "pid,args"]).stdout
    )
    assert not (lab.user(ALICE).home / ".local" / "state" / "nbremote").exists()
