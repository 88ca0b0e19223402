"""nbremote doctor on the lab laptop: one host that answers, one that no longer does.

Both profiles are made by `nbremote add` while their server answers; then
the second address is taken off the server, as when a box is switched off or
moves. The laptop's own checks run on its real files (its key, ~/.ssh/config
with the Include `add` put there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from netlab import ALICE, LAPTOP_USER, SERVER_ADDR

GONE_ADDR = "192.168.77.3"  # a second address of the server, removed after `add`


@pytest.fixture(autouse=True)
def forget_profiles(lab):
    """cleanup_between_tests restores ~/.ssh, not the laptop's config dir."""
    yield
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


def fingerprint(lab) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(lab.server_etc_ssh / "ssh_host_ed25519_key.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()[1]


@pytest.fixture
def two_hosts(lab):
    """Profiles `gpubox` (answers) and `oldbox` (its only address is gone)."""
    srv = lab.server_ns
    subprocess.run(["ip", "-n", srv, "addr", "add", f"{GONE_ADDR}/24", "dev", "eth0"], check=True)
    try:
        for name, address in (("gpubox", SERVER_ADDR), ("oldbox", GONE_ADDR)):
            done = lab.nbremote("add", name, "--invite", f"nbr1:{ALICE}@{address}:22#{fingerprint(lab)}")
            assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["ip", "-n", srv, "addr", "del", f"{GONE_ADDR}/24", "dev", "eth0"], check=True)
    yield


def control_sockets(lab) -> list[str]:
    folder = Path("/tmp") / f"nbremote-{lab.user(LAPTOP_USER).uid}"  # no XDG_RUNTIME_DIR in the lab
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_doctor_passes_the_live_host_and_fails_the_gone_one_with_the_fix(lab, two_hosts):
    started = time.monotonic()
    done = lab.nbremote("doctor", "--json", "--timeout", "3", timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["checks"]}
    assert list(rows) == [
        "openssh",
        "multiplexing",
        "key",
        "profiles",
        "ssh config",
        "gpubox reach",
        "gpubox agent",
        "oldbox reach",
    ]
    for name in ("openssh", "multiplexing", "key", "profiles", "ssh config", "gpubox reach", "gpubox agent"):
        assert rows[name]["status"] == "pass", rows[name]
    home = lab.user(LAPTOP_USER).home
    assert rows["key"]["detail"] == f"{home}/.ssh/id_ed25519 (used by gpubox, oldbox)"
    assert rows["profiles"]["detail"] == f"2 host profiles in {home}/.config/nbremote/hosts.toml"
    assert rows["ssh config"]["detail"] == f"{home}/.ssh/config:1 includes {home}/.config/nbremote/ssh_config"
    assert rows["gpubox reach"]["detail"].startswith(f"LAN {SERVER_ADDR}:22 (")
    assert rows["gpubox agent"]["detail"].endswith("; 0 Jupyter servers of nbremote's there")
    gone = rows["oldbox reach"]
    assert gone["status"] == "fail"
    assert gone["detail"].startswith(f"cannot reach oldbox; tried {GONE_ADDR}:22 (")
    assert "nbremote server expose" in gone["fix"]
    # Hosts at once, each bounded by --timeout: the dead one does not hold up the live one.
    assert took < 20, took
    assert control_sockets(lab) == []  # the logins it made are closed again


def test_doctor_for_one_host_and_for_an_ssh_alias(lab, two_hosts):
    done = lab.nbremote("doctor", "gpubox", "--timeout", "3", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "✓ pass       gpubox reach" in done.stdout and "oldbox reach" not in done.stdout
    assert done.stdout.rstrip().endswith("7 pass, 0 warn, 0 fail")

    done = lab.nbremote("doctor", "server", "--timeout", "3", timeout=60)  # ~/.ssh/config's Host server
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"✓ pass       server reach  {ALICE}@{SERVER_ADDR}:22, login" in done.stdout

    done = lab.nbremote("doctor", "oldbox", "--timeout", "3", timeout=60)
    assert done.returncode == 1
    assert "✗ fail       oldbox reach  cannot reach oldbox" in done.stdout
    assert "fix: check that the server is on and sshd runs" in done.stdout


def test_doctor_reuses_an_open_session_and_leaves_it_open(lab, two_hosts):
    done = lab.nbremote("up", "gpubox", "--no-browser", "--detach", timeout=120)
    assert done.returncode == 0, done.stderr
    sockets = control_sockets(lab)
    assert sockets
    done = lab.nbremote("doctor", "gpubox", "--json", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)["checks"]}
    assert rows["gpubox reach"]["detail"] == "connected already (an nbremote session is open)"
    assert rows["gpubox agent"]["detail"].endswith("; 1 Jupyter server of nbremote's there")
    assert control_sockets(lab) == sockets
    assert lab.nbremote("down", "gpubox", timeout=60).returncode == 0
