"""Helpers for the `nbremote server …` lab tests, on top of netlab's Lab.

The CLI runs inside the server's mount + net namespace as root, the way the
box's owner runs it with sudo; every client (ssh, sshpass, ssh-audit) runs in
the laptop namespace, i.e. over the lab's network.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from netlab import ALICE, LAB_VENV, SERVER_ADDR

SSH_AUDIT = LAB_VENV / "bin" / "ssh-audit"
PASSWORD = "correct horse battery staple"


def server_cli(
    lab, *args: str, state_dir: Path, user: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess:
    """`python -m nbremote server ARGS` on the server, as root unless user."""
    env = lab.nbremote_env({"NBREMOTE_STATE_DIR": str(state_dir)})
    return lab.server_exec(
        [str(LAB_VENV / "bin" / "python"), "-m", "nbremote", "server", *args], user=user, env=env, timeout=timeout
    )


def key_login(lab, port: int, host_alias: str = "server") -> subprocess.CompletedProcess:
    """The laptop's key login; the known host key was stored for port 22, hence the alias."""
    return lab.laptop_exec(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"HostKeyAlias={SERVER_ADDR}",
            "-o",
            "ConnectTimeout=5",
            "-p",
            str(port),
            host_alias,
            "true",
        ],
        timeout=30,
    )


def password_login(
    lab, port: int, user: str = ALICE, *, password: str = PASSWORD, host: str = SERVER_ADDR, via=None
) -> subprocess.CompletedProcess:
    """One password login (no key offered) from the laptop, or through via (e.g. the café's exec)."""
    return (via or lab.laptop_exec)(
        [
            "sshpass",
            "-p",
            password,
            "ssh",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "ConnectTimeout=5",
            "-p",
            str(port),
            f"{user}@{host}",
            "true",
        ],
        timeout=30,
    )


def ssh_audit(lab, port: int) -> dict:
    """ssh-audit's verdict from the laptop: exit code and the failure-level lines."""
    done = lab.laptop_exec([str(SSH_AUDIT), "-n", "--skip-rate-test", f"{SERVER_ADDR}:{port}"], timeout=60)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    fails = [line.strip() for line in plain.splitlines() if "-- [fail]" in line]
    warns = [line.strip() for line in plain.splitlines() if "-- [warn]" in line]
    return {"exit": done.returncode, "fail": fails, "warn": warns}


@contextlib.contextmanager
def password_for(lab, user: str):
    """Give a lab user a password for one test, then put the old shadow field back."""
    old = subprocess.run(["getent", "shadow", user], capture_output=True, text=True, check=True).stdout.split(":")[1]
    subprocess.run(["chpasswd"], input=f"{user}:{PASSWORD}\n", text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["usermod", "-p", old, user], check=True)


@contextlib.contextmanager
def server_nft(lab, ruleset: str):
    """An nft table in the server's namespace for one test (a fault to inject)."""
    name = re.search(r"table (\S+ \S+)", ruleset).group(1)
    done = lab.server_exec(["nft", "-f", "-"], input=ruleset)
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        lab.server_exec(["nft", "delete", "table", *name.split()])


def sshd_listening_ports(lab) -> set[int]:
    done = lab.server_exec(["ss", "-Htlnp"])
    return {int(m.group(1)) for m in re.finditer(r":(\d+)\s.*sshd", done.stdout)}


def as_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextlib.contextmanager
def private_etc(lab, workdir: Path):
    """The server gets its own copy of the host's /etc for a while, /etc/ssh still
    the lab's: what the CLI writes there (nftables.conf) never reaches the host's.
    A directory mount, not a file one: renaming onto a mounted file fails (EBUSY)."""
    copy = workdir / "etc"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree("/etc", copy, symlinks=True, ignore=shutil.ignore_patterns("ssh"))
    copy.joinpath("ssh").mkdir()
    script = f"mount --bind {copy} /etc && mount --bind {lab.server_etc_ssh} /etc/ssh"
    done = lab.server_exec(["sh", "-c", script])
    assert done.returncode == 0, done.stderr
    try:
        yield copy
    finally:
        lab.server_exec(["umount", "/etc/ssh"])
        lab.server_exec(["umount", "/etc"])


def tcp_open(lab, port: int, addr: str = SERVER_ADDR, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from the laptop to the server's port succeeds."""
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({addr!r}, {port}), timeout={timeout}).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    return lab.laptop_exec(["python3", "-c", code], timeout=timeout + 10).returncode == 0
