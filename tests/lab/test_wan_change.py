"""The WAN address that changes (issue 13, parts 1 and 5): the provider renumbers the home's
router, the box's `server expose --keep` records the router's new answer, one connection from
the laptop at home brings it into the profile, and `up` from the café works again.

On the way: the café's `up` with the stale address lists what it tried, when each last
answered, and what to do; `hosts`, `ls` and `status` say how the box was reached and when
each way in last answered.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from homenet import WAN_ADDR, HomeNet
from netlab import ALICE, LAB_PYTHON, LAPTOP_USER, SERVER_ADDR

EXTERNAL = 22022
NEW_WAN = "11.22.33.2"


@pytest.fixture
def home(lab, tmp_path):
    built = HomeNet.build(lab, tmp_path / "homenet")
    yield built
    built.teardown()


@pytest.fixture
def box_state(lab):
    """alice's server state (wan-ip.json), where her `server expose` records the WAN address."""
    folder = lab.user(ALICE).home / ".local" / "state" / "nbremote-server"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


def cafe_nbremote(lab, home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return home.cafe_laptop(lab.nbremote_argv(*args), env=lab.nbremote_env(), timeout=timeout)


def keep_exposed(lab, log: Path) -> subprocess.Popen:
    """alice's `server expose --keep`, renewing every second (the router's answer recorded each time)."""
    return lab.server_popen(
        [str(LAB_PYTHON), "-m", "nbremote", "server", "expose", "--external-port", str(EXTERNAL), "--keep"]
        + ["--lease", "2"],
        user=ALICE,
        env=lab.nbremote_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def recorded(folder: Path) -> str | None:
    try:
        return json.loads((folder / "wan-ip.json").read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def leave_home(lab) -> None:
    """The laptop leaves the LAN: its ssh masters from home end (here both places share one runtime
    dir, and a master from the laptop's namespace would serve the café's `up` with a forward there)."""
    done = lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"])
    for pid in [int(p) for p in done.stdout.split()]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    wait_for(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip(), 5, "masters")


def addresses(lab) -> list[str]:
    done = lab.nbremote("hosts", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["hosts"][0]["addresses"]


def test_one_lan_connection_after_the_wan_address_changed_lets_the_cafe_up_again(lab, home, box_state, tmp_path):
    keeper = keep_exposed(lab, tmp_path / "expose.log")
    try:
        wait_for(lambda: recorded(box_state) == WAN_ADDR, 20, (tmp_path / "expose.log").read_text())
        done = lab.nbremote(
            "add", "gpubox", "--address", SERVER_ADDR, "--address", f"{WAN_ADDR}:{EXTERNAL}", "--user", ALICE
        )
        assert done.returncode == 0, done.stderr
        hosts_file = lab.user(LAPTOP_USER).home / ".config" / "nbremote" / "hosts.toml"
        # The user's own comment in the profile file: the refresh must keep it.
        hosts_file.write_text(hosts_file.read_text().replace("[hosts.gpubox]", "[hosts.gpubox]  # under the desk"))
        hosts_before = hosts_file.read_text()

        up = cafe_nbremote(lab, home, "up", "gpubox", "--detach", "--no-browser")
        assert up.returncode == 0, up.stderr
        assert f"connected to gpubox via WAN {WAN_ADDR}:{EXTERNAL}" in up.stderr
        assert cafe_nbremote(lab, home, "down", "gpubox").returncode == 0

        home.renumber_wan(NEW_WAN)
        wait_for(lambda: recorded(box_state) == NEW_WAN, 10, (tmp_path / "expose.log").read_text())

        stale = cafe_nbremote(lab, home, "up", "gpubox", "--detach", "--no-browser", "--timeout", "3")
        assert stale.returncode == 3, stale.stderr  # UNREACHABLE
        assert f"{WAN_ADDR}:{EXTERNAL} (" in stale.stderr and "last answered" in stale.stderr
        assert "at home, connect once over the LAN" in stale.stderr
        assert addresses(lab) == [SERVER_ADDR, f"{WAN_ADDR}:{EXTERNAL}"]

        # Home again: one connection over the LAN, whatever the command.
        at_home = lab.nbremote("ls", "gpubox")
        assert at_home.returncode == 0, at_home.stderr
        change = f"gpubox's WAN address changed: {WAN_ADDR}:{EXTERNAL} → {NEW_WAN}:{EXTERNAL} (from the server)"
        assert change in at_home.stderr
        assert addresses(lab) == [SERVER_ADDR, f"{NEW_WAN}:{EXTERNAL}"]
        assert hosts_file.read_text() == hosts_before.replace(f'"{WAN_ADDR}:{EXTERNAL}"', f'"{NEW_WAN}:{EXTERNAL}"')
        # ls says how it reached the box, and when each way in last answered.
        assert at_home.stdout.splitlines()[0].startswith(f"gpubox via LAN {SERVER_ADDR}:22")
        assert f"LAN {SERVER_ADDR}:22 (last answered" in at_home.stdout
        assert f"WAN {NEW_WAN}:{EXTERNAL} (never answered)" in at_home.stdout
        again = lab.nbremote("status", "gpubox", "--json")
        assert again.returncode == 0 and change not in again.stderr  # said once
        [doc] = json.loads(again.stdout)["hosts"]
        assert doc["kind"] == "LAN" and doc["path"] == f"{SERVER_ADDR}:22" and doc["renumbered"] == []

        leave_home(lab)
        back = cafe_nbremote(lab, home, "up", "gpubox", "--detach", "--no-browser")
        assert back.returncode == 0, back.stderr
        assert f"connected to gpubox via WAN {NEW_WAN}:{EXTERNAL}" in back.stderr
        status = cafe_nbremote(lab, home, "status", "gpubox")
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"gpubox  via WAN {NEW_WAN}:{EXTERNAL} ")
        assert f"ways in  LAN {SERVER_ADDR}:22 (last answered" in status.stdout
        listed = json.loads(lab.nbremote("hosts", "--json").stdout)["hosts"][0]
        assert [(w["kind"], w["address"]) for w in listed["ways"]] == [
            ("LAN", f"{SERVER_ADDR}:22"),
            ("WAN", f"{NEW_WAN}:{EXTERNAL}"),
        ]
        assert all(isinstance(w["answered"], float) for w in listed["ways"])
    finally:
        cafe_nbremote(lab, home, "down", "gpubox", timeout=60)
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGTERM)
            keeper.wait(10)
