"""Host profiles end to end: `add` from a bare laptop, the invite's pinned key, the address race.

The laptop user runs the real CLI in the laptop namespace. Password logins go
through sshpass (it answers ssh's prompt on the terminal it makes), with
stdin not a terminal, so nbremote itself never prompts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from netlab import ALICE, LAB_PYTHON, LAPTOP_USER, SERVER_ADDR

SECOND_ADDR = "192.168.77.3"  # another address of the same server, in the same LAN


@pytest.fixture(autouse=True)
def forget_profiles(lab):
    """cleanup_between_tests restores ~/.ssh, not the laptop's config dir."""
    yield
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


@pytest.fixture
def second_address(lab):
    """The server also answers on SECOND_ADDR; `drop` makes its first address a black hole."""
    srv = lab.server_ns
    subprocess.run(["ip", "-n", srv, "addr", "add", f"{SECOND_ADDR}/24", "dev", "eth0"], check=True)

    class Drop:
        def __call__(self, address: str) -> None:
            # In the server's namespace, not the laptop's: the laptop sees silence, as on a
            # real dead path, not a local error that fails at once.
            rules = (
                f"table inet nbrtest {{\n chain input {{\n type filter hook input priority -10;\n"
                f" ip daddr {address} tcp dport 22 drop;\n }}\n}}\n"
            )
            subprocess.run(["ip", "netns", "exec", srv, "nft", "-f", "-"], input=rules, text=True, check=True)

    yield Drop()
    subprocess.run(["ip", "netns", "exec", srv, "nft", "delete", "table", "inet", "nbrtest"], capture_output=True)
    subprocess.run(["ip", "-n", srv, "addr", "del", f"{SECOND_ADDR}/24", "dev", "eth0"], check=True)


def laptop_ssh(lab) -> Path:
    return lab.user(LAPTOP_USER).home / ".ssh"


def add_with_password(lab, password: str, *args: str) -> subprocess.CompletedProcess:
    return lab.laptop_exec(
        ["sshpass", "-p", password, *lab.nbremote_argv("add", *args)], env=lab.nbremote_env(), timeout=60
    )


def host_fingerprint(lab, pub: str = "ssh_host_ed25519_key.pub") -> str:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(lab.server_etc_ssh / pub)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[1]


def test_add_on_a_laptop_without_keys_keeps_its_ssh_config(lab, alice_password):
    ssh_dir = laptop_ssh(lab)
    for name in ("id_ed25519", "id_ed25519.pub", "known_hosts"):
        (ssh_dir / name).unlink()
    config_before = (ssh_dir / "config").read_bytes()

    done = add_with_password(lab, alice_password, "gpubox", "--address", SERVER_ADDR, "--user", ALICE)
    assert done.returncode == 0, done.stderr
    assert "made a new key" in done.stderr and "(key installed)" in done.stderr

    include = f"Include {lab.user(LAPTOP_USER).home}/.config/nbremote/ssh_config\n".encode()
    assert (ssh_dir / "config").read_bytes() == include + config_before
    assert (ssh_dir / "config.nbremote-backup").read_bytes() == config_before
    assert lab.ssh("true", host="gpubox").returncode == 0  # plain ssh, no prompt (BatchMode)
    new_key = (ssh_dir / "id_ed25519.pub").read_text().split()[1]
    alice_ssh = lab.user(ALICE).home / ".ssh"
    assert (alice_ssh / "authorized_keys").read_text().count(new_key) == 1
    assert (alice_ssh / "authorized_keys").stat().st_mode & 0o777 == 0o600
    assert alice_ssh.stat().st_mode & 0o777 == 0o700

    # Idempotent: again, with no password to give, the key is found working and not added twice.
    assert lab.nbremote("remove", "gpubox").returncode == 0
    done = lab.nbremote("add", "gpubox", "--address", SERVER_ADDR, "--user", ALICE)
    assert done.returncode == 0, done.stderr
    assert "(key installed)" not in done.stderr
    assert (alice_ssh / "authorized_keys").read_text().count(new_key) == 1
    assert (ssh_dir / "config").read_bytes() == include + config_before


def test_add_from_a_fresh_home(lab, alice_password):
    ssh_dir = laptop_ssh(lab)
    shutil.rmtree(ssh_dir)
    done = add_with_password(lab, alice_password, "gpubox", "--address", SERVER_ADDR, "--user", ALICE)
    assert done.returncode == 0, done.stderr
    assert (ssh_dir / "config").read_text() == f"Include {lab.user(LAPTOP_USER).home}/.config/nbremote/ssh_config\n"
    assert not (ssh_dir / "config.nbremote-backup").exists()
    done = lab.ssh("echo", "hello from", "$USER", host="gpubox")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"hello from {ALICE}\n"
    done = lab.nbremote("ssh", "gpubox", "--", "echo", "via", "nbremote")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "via nbremote\n"
    assert f"connected to gpubox via LAN {SERVER_ADDR}:22" in done.stderr


def test_a_refused_password_login_writes_no_profile(lab, alice_password):
    ssh_dir = laptop_ssh(lab)
    (ssh_dir / "id_ed25519").unlink()
    (ssh_dir / "id_ed25519.pub").unlink()
    config_before = (ssh_dir / "config").read_bytes()
    # No terminal and no sshpass: no one to type the password, so the login is refused.
    done = lab.nbremote("add", "gpubox", "--address", SERVER_ADDR, "--user", ALICE)
    assert done.returncode == 4, done.stderr  # AUTH_FAILED
    assert f"{ALICE}@{SERVER_ADDR} refused the login" in done.stderr
    assert (ssh_dir / "config").read_bytes() == config_before
    assert not (lab.user(LAPTOP_USER).home / ".config" / "nbremote").exists()


def invite_line(lab, fingerprint: str) -> str:
    return f"nbr1:{ALICE}@{SERVER_ADDR}:22#{fingerprint}"


def test_add_invite_pins_the_key_without_asking(lab):
    (laptop_ssh(lab) / "known_hosts").unlink()  # nothing known: the invite alone vouches for the key
    done = lab.nbremote("add", "gpubox", "--invite", invite_line(lab, host_fingerprint(lab)))
    assert done.returncode == 0, done.stderr
    assert "matches the invite" in done.stderr
    pinned = (lab.user(LAPTOP_USER).home / ".config" / "nbremote" / "known_hosts").read_text()
    server_key = (lab.server_etc_ssh / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert pinned == f"nbremote.gpubox ssh-ed25519 {server_key}\n"
    assert lab.ssh("true", host="gpubox").returncode == 0


def test_server_invite_then_add_on_the_laptop(lab):
    done = lab.server_exec(
        [str(LAB_PYTHON), "-m", "nbremote", "server", "invite", "--user", ALICE, "--address", "gpubox.example.org"],
        env={
            "PYTHONPATH": str(lab.src_copy / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "NBREMOTE_STATE_DIR": str(lab.workdir / "server-state"),
        },
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.split()[-1]
    assert line == f"nbr1:{ALICE}@{SERVER_ADDR},gpubox.example.org:22#{host_fingerprint(lab)}"
    done = lab.nbremote("add", "gpubox", "--invite", line, "--timeout", "1")
    assert done.returncode == 0, done.stderr
    assert lab.nbremote("ssh", "gpubox", "--", "true").returncode == 0


def test_add_invite_refuses_a_swapped_host_key(lab):
    invite = invite_line(lab, host_fingerprint(lab))
    old = host_fingerprint(lab)
    for suffix in ("", ".pub"):
        (lab.server_etc_ssh / f"ssh_host_ed25519_key{suffix}").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key")],
        check=True,
    )
    lab.reload_sshd()
    new = host_fingerprint(lab)
    config_before = (laptop_ssh(lab) / "config").read_bytes()

    done = lab.nbremote("add", "gpubox", "--invite", invite)
    assert done.returncode == 5, done.stderr  # HOST_KEY
    assert "does not match the invite: refusing" in done.stderr
    assert f"expected {old} (from the invite)" in done.stderr
    assert f"received {new} (ssh-ed25519)" in done.stderr
    assert "fresh invite" in done.stderr
    assert (laptop_ssh(lab) / "config").read_bytes() == config_before
    assert not (lab.user(LAPTOP_USER).home / ".config" / "nbremote").exists()


def test_a_pinned_key_that_changes_is_refused_with_both_fingerprints(lab):
    done = lab.nbremote("add", "gpubox", "--invite", invite_line(lab, host_fingerprint(lab)))
    assert done.returncode == 0, done.stderr
    old = host_fingerprint(lab)
    for suffix in ("", ".pub"):
        (lab.server_etc_ssh / f"ssh_host_ed25519_key{suffix}").unlink()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key")],
        check=True,
    )
    lab.reload_sshd()
    done = lab.nbremote("ssh", "gpubox", "--", "true")
    assert done.returncode == 5, done.stderr
    assert "has changed: refusing to connect" in done.stderr
    assert f"expected {old}" in done.stderr and f"received {host_fingerprint(lab)}" in done.stderr
    assert "nbremote remove gpubox" in done.stderr and "--invite" in done.stderr


def _up(lab, name: str) -> str:
    done = lab.nbremote("up", name, "--no-browser", "--detach", timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def _last_path(lab, name: str) -> dict:
    done = lab.nbremote("hosts", "--json")
    assert done.returncode == 0, done.stderr
    return {h["name"]: h for h in json.loads(done.stdout)["hosts"]}[name]["last_path"]


def test_up_takes_the_preferred_address_and_falls_back_within_one_stagger_step(lab, second_address):
    for name, addresses in (("both", (SERVER_ADDR, SECOND_ADDR)), ("good", (SECOND_ADDR,))):
        args = [a for addr in addresses for a in ("--address", addr)]
        done = lab.nbremote("add", name, *args, "--user", ALICE, "--timeout", "2")
        assert done.returncode == 0, done.stderr

    err = _up(lab, "both")
    assert f"connected to both via LAN {SERVER_ADDR}:22" in err
    assert lab.nbremote("down", "both").returncode == 0

    second_address(SERVER_ADDR)
    logins = {"both": [], "good": []}
    for _ in range(3):
        for name in ("good", "both"):
            started = time.monotonic()
            err = _up(lab, name)
            elapsed = time.monotonic() - started
            assert f"connected to {name} via LAN {SECOND_ADDR}:22" in err
            last = _last_path(lab, name)
            assert last["address"] == f"{SECOND_ADDR}:22" and last["kind"] == "LAN"
            logins[name].append(last["login_s"])
            assert lab.nbremote("down", name).returncode == 0
            assert elapsed < 30
    fallback, direct = sorted(logins["both"])[1], sorted(logins["good"])[1]
    # One stagger step (0.25 s) plus scheduling noise on a 2-core VM, not a connect timeout.
    assert fallback - direct < 0.25 + 0.15, logins
    assert fallback >= 0.25, logins
    # Plain `ssh both` follows the path that worked last.
    assert lab.ssh("true", host="both").returncode == 0
