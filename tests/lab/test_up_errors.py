"""Every way `nbremote up` can fail: its message, its exit code, and proof that
nothing was started or left behind (no ssh master, no Jupyter, no record)."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from netlab import ALICE, BOB, LAB_PYTHON, LAPTOP_USER, SERVER_ADDR

from test_up import wait_until


def up(lab, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return lab.nbremote("up", *args, "--no-browser", "--detach", timeout=timeout)


def assert_nothing_left(lab) -> None:
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip()), (
        "an ssh process of the laptop user is still running"
    )
    for user in (ALICE, BOB):
        assert not lab.server_exec(["pgrep", "-u", user, "-f", "jupyter"]).stdout.strip()
    sessions = lab.user(LAPTOP_USER).home / ".local/state/nbremote/sessions.json"
    assert not sessions.exists() or json.loads(sessions.read_text()) == {}


@contextmanager
def appended(path: Path, text: str, owner):
    """Append to a lab user's file for one test, then put it back byte for byte."""
    original = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)
    import os

    os.chown(path.parent, owner.uid, owner.gid)
    os.chown(path, owner.uid, owner.gid)
    try:
        yield
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


def test_unreachable_address_names_it_and_gives_up_within_the_timeout(lab):
    started = time.monotonic()
    done = up(lab, "ssh://nbr-alice@192.168.77.99", "--timeout", "2")
    assert done.returncode == 3, done.stderr
    assert "cannot reach ssh://nbr-alice@192.168.77.99 at 192.168.77.99:22" in done.stderr
    assert time.monotonic() - started < 2 + 5
    assert_nothing_left(lab)


def test_refused_port_says_connection_refused(lab):
    done = up(lab, f"ssh://nbr-alice@{SERVER_ADDR}:2222")
    assert done.returncode == 3, done.stderr
    assert f"at {SERVER_ADDR}:2222 (connection refused)" in done.stderr
    assert_nothing_left(lab)


def test_refused_login_names_the_user_and_points_to_nbremote_add(lab):
    done = up(lab, f"ssh://nbr-nobody@{SERVER_ADDR}")
    assert done.returncode == 4, done.stderr
    assert f"nbr-nobody@{SERVER_ADDR} refused the login" in done.stderr
    assert "nbremote add" in done.stderr
    assert_nothing_left(lab)


def _fingerprint(pub: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]


def test_changed_host_key_is_refused_with_both_fingerprints(lab):
    key = lab.server_etc_ssh / "ssh_host_ed25519_key"
    old = _fingerprint(key.with_suffix(".pub"))
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    lab.reload_sshd()
    new = _fingerprint(key.with_suffix(".pub"))
    done = up(lab, "server")
    assert done.returncode == 5, done.stderr
    assert "host key of server (192.168.77.2:22) has changed" in done.stderr
    assert f"expected {old}" in done.stderr and f"received {new}" in done.stderr
    # Refused before any command ran: the agent never made its state directory.
    assert not (lab.user(ALICE).home / ".local/state/nbremote").exists()
    assert_nothing_left(lab)


def test_no_python_on_the_server(lab):
    bob = lab.user(BOB)
    with appended(bob.home / ".profile", "\nPATH=/nonexistent; export PATH\n", bob):
        done = up(lab, "server-bob")
    assert done.returncode == 6, done.stderr
    assert "no python3 on server-bob" in done.stderr
    assert_nothing_left(lab)


def test_no_jupyter_on_the_login_path_says_how_to_install_it(lab):
    done = up(lab, "server-bob")
    assert done.returncode == 8, done.stderr
    assert "no JupyterLab on the login PATH of server-bob" in done.stderr
    assert "~/.venvs/jupyter/bin/pip install jupyterlab" in done.stderr  # not pip --user: PEP 668
    assert "--env '~/.venvs/jupyter'" in done.stderr
    assert_nothing_left(lab)


@pytest.mark.parametrize(
    "env, message",
    [
        ("/opt/no-such-env", "no environment at /opt/no-such-env on server"),
        ("torch", 'no conda environment "torch" on server'),
        ("/tmp", "no Jupyter in the environment at /tmp"),
    ],
)
def test_missing_environment(lab, env, message):
    done = up(lab, "server", "--env", env)
    assert done.returncode == 8, done.stderr
    assert message in done.stderr
    assert_nothing_left(lab)


def test_missing_directory_is_named(lab):
    done = up(lab, "server", "--dir", "/srv/no such dir")
    assert done.returncode == 9, done.stderr
    assert "no directory /srv/no such dir on server" in done.stderr
    assert_nothing_left(lab)


def test_busy_local_port_fails_before_anything_starts(lab):
    listener = lab.laptop_popen(
        [
            str(LAB_PYTHON),
            "-c",
            "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 18765)); "
            "s.listen(); print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert listener.stdout.readline().strip() == "ready"
        done = up(lab, "server", "--port", "18765")
        assert done.returncode == 10, done.stderr
        assert "local port 18765 is busy" in done.stderr
        assert not (lab.user(ALICE).home / ".local/state/nbremote").exists()
    finally:
        listener.kill()
        listener.wait()
    assert_nothing_left(lab)


def test_jupyter_that_exits_during_start_up_shows_its_log(lab):
    alice = lab.user(ALICE)
    config = alice.home / ".jupyter" / "jupyter_server_config.py"
    with appended(config, "c.ServerApp.certfile = '/nonexistent/cert.pem'\n", alice):
        done = up(lab, "server")
    assert done.returncode == 11, done.stderr
    assert "Jupyter exited during start-up" in done.stderr
    assert 'certfile "/nonexistent/cert.pem" does not exist' in done.stderr
    assert_nothing_left(lab)
