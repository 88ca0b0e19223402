"""One profile with the home LAN address and the router's WAN address (port forward 22022 → sshd):
`up` goes via the LAN at home and via the WAN from the café, falls back to the WAN within one
stagger step when the LAN address is a black hole, and a tunnel whose laptop leaves the LAN
comes back via the WAN on the same local port, saying so (tests/lab/homenet.py draws the network).
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import statistics
import subprocess
import threading
import time

import pytest
from homenet import WAN_ADDR, HomeNet
from netlab import ALICE, LAB_PYTHON, LAPTOP_USER, SERVER_ADDR

from test_up import token_of, up_json, wait_until

EXTERNAL = 22022
LAN = f"LAN {SERVER_ADDR}:22"
WAN = f"WAN {WAN_ADDR}:{EXTERNAL}"


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    built = HomeNet.build(lab, tmp_path_factory.mktemp("homenet"))
    try:
        built.forward_port(EXTERNAL)
        built.laptop_uplink()
        yield built
    finally:
        built.teardown()


def add(lab, name: str, *addresses: str) -> None:
    args = [a for address in addresses for a in ("--address", address)]
    done = lab.nbremote("add", name, *args, "--user", ALICE, "--timeout", "2")
    assert done.returncode == 0, done.stderr


@pytest.fixture
def gpubox(lab, home):
    add(lab, "gpubox", SERVER_ADDR, f"{WAN_ADDR}:{EXTERNAL}")
    yield "gpubox"
    # cleanup_between_tests restores ~/.ssh, not the laptop's config dir.
    shutil.rmtree(lab.user(LAPTOP_USER).home / ".config" / "nbremote", ignore_errors=True)


@pytest.fixture
def blackhole_lan(lab):
    """The server's LAN address drops ssh silently, as a dead path does (the WAN path,
    forwarded by the router to the server's other address, still works)."""
    rules = (
        f"table inet nbrtest {{\n chain input {{\n type filter hook input priority -10;\n"
        f" ip daddr {SERVER_ADDR} tcp dport 22 drop;\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", lab.server_ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    yield
    subprocess.run(
        ["ip", "netns", "exec", lab.server_ns, "nft", "delete", "table", "inet", "nbrtest"], capture_output=True
    )


@pytest.fixture
def leave_lan(lab):
    """Takes the laptop's LAN link down (its LAN route goes with it); the café's Wi-Fi stays."""

    def leave() -> None:
        subprocess.run(["ip", "-n", lab.laptop_ns, "link", "set", "eth0", "down"], check=True)

    yield leave
    subprocess.run(["ip", "-n", lab.laptop_ns, "link", "set", "eth0", "up"], check=True)


def status_through(run, port: int, token: str) -> int:
    """GET /api/status through the local port, run by `run` (the laptop at home or in the café)."""
    done = run(
        [
            str(LAB_PYTHON),
            "-c",
            "import sys, urllib.request\n"
            "r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'token ' + sys.argv[2]})\n"
            "print(urllib.request.urlopen(r, timeout=2).status)",
            f"http://127.0.0.1:{port}/api/status",
            token,
        ]
    )
    return int(done.stdout) if done.returncode == 0 else 0


def last_path(lab, name: str) -> dict:
    done = lab.nbremote("hosts", "--json")
    assert done.returncode == 0, done.stderr
    return {h["name"]: h for h in json.loads(done.stdout)["hosts"]}[name]["last_path"]


def close_masters(lab) -> None:
    """End the laptop's ssh masters, so the next command races the addresses again."""
    lab.laptop_exec(
        [
            "sh",
            "-c",
            'for s in /tmp/nbremote-$(id -u)/*; do ssh -o ControlPath="$s" -O exit none 2>/dev/null; done; true',
        ]
    )


def url_port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


def test_up_goes_via_lan_at_home_and_via_wan_from_the_cafe(lab, home, gpubox):
    done = lab.nbremote("up", "gpubox", "--no-browser", "--detach", timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"connected to gpubox via {LAN} (" in done.stderr
    assert last_path(lab, "gpubox")["kind"] == "LAN"
    assert lab.nbremote("down", "gpubox").returncode == 0

    cafe = home.cafe_laptop(
        [*lab.nbremote_argv("up", "gpubox", "--no-browser", "--detach")], env=lab.nbremote_env(), timeout=120
    )
    assert cafe.returncode == 0, cafe.stderr
    assert f"connected to gpubox via {WAN} (" in cafe.stderr
    url = cafe.stdout.strip()
    assert status_through(home.cafe_laptop, url_port(url), token_of(url)) == 200
    assert last_path(lab, "gpubox") | {"when": 0, "rtt_ms": 0, "login_s": 0} == {
        "address": f"{WAN_ADDR}:{EXTERNAL}",
        "kind": "WAN",
        "when": 0,
        "rtt_ms": 0,
        "login_s": 0,
    }
    down = home.cafe_laptop([*lab.nbremote_argv("down", "gpubox")], env=lab.nbremote_env(), timeout=60)
    assert down.returncode == 0, down.stderr

    # Back home, a command other than `up` that asks the agent records its login's path too,
    # round trip and all (timed beside the agent's call).
    close_masters(lab)
    listed = lab.nbremote("jobs", "gpubox")
    assert listed.returncode == 0, listed.stderr
    path = last_path(lab, "gpubox")
    assert path["kind"] == "LAN" and (path["rtt_ms"] or 0) > 0, path


def test_a_blackholed_lan_address_falls_back_to_wan_within_one_stagger_step(lab, home, gpubox, blackhole_lan):
    done = lab.nbremote("up", "gpubox", "--no-browser", "--detach", timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"connected to gpubox via {WAN} (" in done.stderr
    assert lab.nbremote("down", "gpubox").returncode == 0

    add(lab, "wanonly", f"{WAN_ADDR}:{EXTERNAL}")
    logins: dict[str, list[float]] = {"gpubox": [], "wanonly": []}
    for _ in range(3):
        for name in logins:
            close_masters(lab)
            done = lab.nbremote("ssh", name, "--", "true")
            assert done.returncode == 0, done.stderr
            assert f"connected to {name} via {WAN} (" in done.stderr
            logins[name].append(last_path(lab, name)["login_s"])
    fallback, direct = statistics.median(logins["gpubox"]), statistics.median(logins["wanonly"])
    print(f"login via WAN: {direct:.3f} s alone, {fallback:.3f} s behind a dead LAN address ({logins})")
    # One stagger step (0.25 s) plus scheduling noise on a 2-core VM, not a connect timeout.
    assert 0.25 <= fallback < direct + 0.25 + 0.15, logins


class PtyReader:
    """What the client writes to its terminal, collected by a thread."""

    def __init__(self, fd: int):
        self.fd, self.data, self.lock = fd, bytearray(), threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self) -> str:
        with self.lock:
            return self.data.decode(errors="replace")

    def wait_for(self, needle: str, seconds: float = 30) -> bool:
        return wait_until(lambda: needle in self.text(), seconds)


def test_a_foreground_up_follows_the_laptop_from_lan_to_wan_on_the_same_port(lab, home, gpubox, leave_lan):
    terminal, tty = pty.openpty()  # the status line is drawn only on a terminal
    client = lab.nbremote_popen("up", "gpubox", "--no-browser", stdout=subprocess.PIPE, stderr=tty)
    os.close(tty)
    screen = PtyReader(terminal)
    try:
        url = client.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), screen.text()
        port, token = url_port(url), token_of(url)
        assert f"connected to gpubox via {LAN} (" in screen.text()
        assert screen.wait_for(f"· via {LAN} ·", 10), screen.text()
        assert status_through(lab.laptop_exec, port, token) == 200

        leave_lan()
        left = time.monotonic()
        assert screen.wait_for(f"back via {WAN} (", 40), screen.text()
        took = time.monotonic() - left
        assert status_through(lab.laptop_exec, port, token) == 200  # the same local port, now via WAN
        shown = screen.text().split(f"lost the connection to gpubox via {LAN}; reconnecting")[1]
        assert re.search(r"\rreconnecting \(attempt 1, \d+ s\)…", shown), shown
        assert shown.index("reconnecting (attempt") < shown.index(f"back via {WAN} (")
        assert f"localhost:{port} → gpubox again" in shown
        assert screen.wait_for(f"· via {WAN} ·", 5), screen.text()
        print(f"foreground up: back via WAN {took:.1f} s after the LAN link went down")
        # Two failed probes (at most 2 × (1 s + 2 s)) and one race with a fast-failing LAN address.
        assert took < 15, took
    finally:
        os.killpg(client.pid, signal.SIGINT)
        client.wait(30)
        screen.thread.join(5)  # the client has closed the terminal: the reader has all of it
        os.close(terminal)
    assert "stopped forwarding; the notebook keeps running on gpubox" in screen.text(), screen.text()
    assert lab.nbremote("down", "gpubox").returncode == 0


def test_the_detached_keeper_follows_the_laptop_from_lan_to_wan_on_the_same_port(lab, home, gpubox, leave_lan):
    result = up_json(lab, "gpubox")
    port, token = result["local_port"], token_of(result["url"])
    assert status_through(lab.laptop_exec, port, token) == 200
    keeper_log = lab.user(LAPTOP_USER).home / ".local" / "state" / "nbremote" / "keeper.log"
    assert wait_until(lambda: lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-f", "nbremote.keeper"]).stdout)

    leave_lan()
    left = time.monotonic()
    assert wait_until(lambda: f"back via {WAN} (" in keeper_log.read_text(), 40), keeper_log.read_text()
    took = time.monotonic() - left
    assert status_through(lab.laptop_exec, port, token) == 200
    log = keeper_log.read_text()
    assert f"gpubox ~: lost the connection to gpubox via {LAN}; reconnecting" in log
    assert re.search(r"gpubox ~: reconnecting \(attempt 1, \d+ s\)…", log), log
    assert f"localhost:{port} → gpubox again" in log
    assert last_path(lab, "gpubox")["kind"] == "WAN"  # so the next `up` knows where the laptop is
    print(f"detached keeper: back via WAN {took:.1f} s after the LAN link went down")
    assert took < 15, took
    assert lab.nbremote("down", "gpubox").returncode == 0
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-f", "nbremote.keeper"]).stdout)
