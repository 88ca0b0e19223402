"""From a fresh server and a fresh laptop to a notebook in two set-up commands.

The server: the lab's sshd with Debian's default config (password logins on),
alice without any key. The laptop: no key, no known_hosts, no ssh config.
`sudo nbremote server init` runs on the server and waits; `nbremote add
gpubox --invite LINE` runs on the home laptop, sshpass answering the one
password prompt; then `nbremote up gpubox` from the café over the WAN, through
the router's UPnP forward. Then the bad inputs, each with its error and proof
that nothing changed, and Ctrl-C at each waiting point.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from homenet import ECHO_URL, WAN_ADDR, HomeNet
from netlab import ALICE, BOB, LAB_VENV, LAPTOP_USER, SERVER_ADDR, etc_ssh_digest
from serverlab import (
    PASSWORD,
    password_for,
    password_login,
    private_etc,
    server_cli,
    ssh_audit,
    sshd_listening_ports,
)

from nbremote import invite

NAME = "gpubox"


@dataclass
class Fresh:
    home: HomeNet
    state: Path
    password: str
    workdir: Path


@pytest.fixture
def fresh(lab, tmp_path, alice_password):
    home = HomeNet.build(lab, tmp_path / "homenet")
    state = tmp_path / "s"
    laptop = lab.user(LAPTOP_USER).home
    try:
        with private_etc(lab, tmp_path):
            (lab.user(ALICE).home / ".ssh" / "authorized_keys").unlink()
            for name in ("id_ed25519", "id_ed25519.pub", "known_hosts", "config"):
                (laptop / ".ssh" / name).unlink(missing_ok=True)
            yield Fresh(home, state, alice_password, tmp_path)
            server_cli(lab, "restore", state_dir=state)
    finally:
        lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])
        home.teardown()
        shutil.rmtree(laptop / ".config" / "nbremote", ignore_errors=True)


class Init:
    """`server init` running on the server, read line by line."""

    def __init__(self, lab, fresh: Fresh, *args: str) -> None:
        self.err_path = fresh.workdir / f"init-{time.monotonic_ns()}.err"
        env = lab.nbremote_env({"NBREMOTE_STATE_DIR": str(fresh.state)})
        self.proc = lab.server_popen(
            [
                str(LAB_VENV / "bin" / "python"),
                "-m",
                "nbremote",
                "server",
                "init",
                "--yes",
                "--allow-user",
                ALICE,
                "--echo-url",
                ECHO_URL,
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.err_path.open("w"),
        )
        self.out = ""

    def invite(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(0.2):
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    self.out += line
                    found = re.search(r"--invite (\S+)", line)
                    if found:
                        return found.group(1)
        raise AssertionError(f"init printed no invite: {self.out}\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def finish(self, timeout: float = 120) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.out += out or ""
        return self.proc.returncode

    def interrupt(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.finish(60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.communicate(timeout=60)


def add(
    lab, password: str, line: str, *, name: str = NAME, env: dict | None = None, timeout: float = 180
) -> subprocess.CompletedProcess:
    return lab.laptop_exec(
        ["sshpass", "-p", password, *lab.nbremote_argv("add", name, "--invite", line)],
        env=lab.nbremote_env(env),
        timeout=timeout,
    )


def cafe_nbremote(lab, fresh: Fresh, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return fresh.home.cafe_laptop([*lab.nbremote_argv(*args)], env=lab.nbremote_env(), timeout=timeout)


def cafe_port_open(fresh: Fresh, port: int) -> bool:
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({WAN_ADDR!r}, {port}), timeout=1).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    return fresh.home.cafe_exec(["python3", "-c", code], timeout=15).returncode == 0


def password_refused(lab, port: int, user: str = ALICE, password: str = PASSWORD, via=None) -> bool:
    host = SERVER_ADDR if via is None else WAN_ADDR
    return password_login(lab, port, user, password=password, host=host, via=via).returncode != 0


def server_state(lab) -> tuple[str, bool, set[int]]:
    """What must not change when a step is undone: /etc/ssh, alice's keys, sshd's ports."""
    return (
        etc_ssh_digest(lab.server_etc_ssh),
        (lab.user(ALICE).home / ".ssh" / "authorized_keys").exists(),
        sshd_listening_ports(lab),
    )


def laptop_state(lab) -> list[str]:
    home = lab.user(LAPTOP_USER).home
    return sorted(
        str(p.relative_to(home))
        for d in (home / ".ssh", home / ".config" / "nbremote")
        if d.exists()
        for p in d.rglob("*")
    )


def test_two_commands_from_fresh_machines_then_up_from_the_cafe(lab, fresh):
    before = etc_ssh_digest(lab.server_etc_ssh)
    init = Init(lab, fresh)
    try:
        line = init.invite()
        parsed = invite.parse(line)
        assert parsed.user == ALICE and parsed.port == 22 and parsed.wait and parsed.hosts[0] == SERVER_ADDR
        # While it waits: alice's password from the LAN only; no forward on the router yet.
        assert not password_refused(lab, 22, password=fresh.password)
        assert "dport 22" not in fresh.home.forwarded_ports()

        done = add(lab, fresh.password, line)
        assert done.returncode == 0, done.stderr + init.stderr
        assert init.finish() == 0, init.stderr
    finally:
        init.stop()
    assert "made a new key" in done.stderr and "(key installed)" in done.stderr
    assert f"{NAME} has finished: port 22222" in done.stderr
    assert f"waiting up to 10 min for the first key login of {ALICE}" in init.stderr
    assert f"first key login of {ALICE} (from 192.168.77.10)" in init.stderr
    hosts = json.loads(lab.nbremote("hosts", "--json").stdout)
    profile = (
        next(h for h in hosts["hosts"] if h["name"] == NAME)
        if isinstance(hosts, dict)
        else next(h for h in hosts if h["name"] == NAME)
    )
    assert profile["port"] == 22222
    assert profile["addresses"][0].startswith(SERVER_ADDR) and profile["addresses"][-1].startswith(WAN_ADDR)

    up = cafe_nbremote(lab, fresh, "up", NAME, "--no-browser", "--detach", "--json")
    assert up.returncode == 0, up.stderr
    url = json.loads(up.stdout)["url"]
    assert url.startswith("http://127.0.0.1:")

    # Afterwards: no password anywhere, only the ssh port from the café, nothing but sshd off loopback.
    assert sshd_listening_ports(lab) == {22222}
    for port in sshd_listening_ports(lab):
        assert password_refused(lab, port, password=fresh.password)
    assert password_refused(lab, 22222, password=fresh.password, via=fresh.home.cafe_exec)
    assert cafe_port_open(fresh, 22222)
    jupyter_port = int(re.search(r":(\d+)", url.split("//")[1]).group(1))
    for port in (22, 80, 8888, jupyter_port):
        assert not cafe_port_open(fresh, port), port
    listeners = lab.server_exec(["ss", "-Htlnp"]).stdout.splitlines()
    off_loopback = [row for row in listeners if not re.search(r"\s(127\.0\.0\.1|\[::1\]):\d+\s", row)]
    assert off_loopback and all("sshd" in row for row in off_loopback), off_loopback
    audit = ssh_audit(lab, 22222)
    assert audit["fail"] == [], audit

    assert cafe_nbremote(lab, fresh, "down", NAME, timeout=60).returncode == 0
    restored = server_cli(lab, "restore", state_dir=fresh.state)
    assert restored.returncode == 0, restored.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == before
    assert sshd_listening_ports(lab) == {22}
    assert not (lab.user(ALICE).home / ".local/state/nbremote/server-init.json").exists()


def test_a_wrong_password_is_said_and_the_server_keeps_waiting(lab, fresh):
    init = Init(lab, fresh)
    try:
        line = init.invite()
        laptop_before = laptop_state(lab)
        # ssh's own three tries, each answered wrong (sshpass would give up after the first).
        askpass = lab.user(LAPTOP_USER).home / ".nbr-askpass"
        askpass.write_text("#!/bin/sh\necho not-the-password\n")
        askpass.chmod(0o755)
        try:
            wrong = lab.nbremote(
                "add",
                NAME,
                "--invite",
                line,
                timeout=120,
                env={"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"},
            )
        finally:
            askpass.unlink()
        assert wrong.returncode == 4, wrong.stderr
        assert f"wrong password for {ALICE} on {NAME}" in wrong.stderr
        assert laptop_state(lab) == laptop_before  # the key it made went too
        assert not (lab.user(ALICE).home / ".ssh" / "authorized_keys").exists()
        assert init.proc.poll() is None
        right = add(lab, fresh.password, line)
        assert right.returncode == 0, right.stderr
        assert init.finish() == 0, init.stderr
    finally:
        init.stop()


def test_ctrl_c_while_the_server_waits_puts_everything_back(lab, fresh):
    before = server_state(lab)
    init = Init(lab, fresh)
    try:
        init.invite()
        assert server_state(lab) != before
        assert init.interrupt() == 130
    finally:
        init.stop()
    assert "stopped waiting (Ctrl-C): sshd is as it was before init" in init.stderr
    assert server_state(lab) == before
    assert not (lab.user(ALICE).home / ".local/state/nbremote/server-init.json").exists()


def test_an_expired_wait_then_add_changes_nothing(lab, fresh):
    before = server_state(lab)
    init = Init(lab, fresh, "--wait", "3")
    line = init.invite()
    assert init.finish() == 1
    assert f"no key login of {ALICE} within 3 s: stopped waiting" in init.stderr
    assert server_state(lab) == before
    laptop_before = laptop_state(lab)
    late = add(lab, fresh.password, line)
    assert late.returncode == 1, late.stderr
    assert f"{NAME} is not waiting for a laptop with this invite: nothing was installed" in late.stderr
    assert server_state(lab) == before and laptop_state(lab) == laptop_before


def test_add_from_outside_the_lan_is_refused_and_the_wait_goes_on(lab, fresh):
    fresh.home.forward_port(22, 22)  # a forward set by hand in the router: init never asks for it while waiting
    init = Init(lab, fresh)
    try:
        line = init.invite()
        via_wan = re.sub(r"@[^:]+:", f"@{WAN_ADDR}:", line)
        laptop_before = laptop_state(lab)
        away = fresh.home.cafe_laptop(
            ["sshpass", "-p", fresh.password, *lab.nbremote_argv("add", NAME, "--invite", via_wan)],
            env=lab.nbremote_env(),
            timeout=120,
        )
        assert away.returncode == 4, away.stderr
        assert f"{NAME} takes no password from this laptop" in away.stderr
        assert laptop_state(lab) == laptop_before
        assert password_refused(lab, 22, password=fresh.password, via=fresh.home.cafe_exec)
        # Nor from the LAN for a user init does not wait for.
        with password_for(lab, BOB):
            assert password_refused(lab, 22, user=BOB)
        assert init.proc.poll() is None
        assert init.interrupt() == 130
    finally:
        init.stop()


def test_an_invite_from_another_server_is_refused(lab, fresh):
    init = Init(lab, fresh)
    try:
        line = init.invite()
        other = subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fresh.workdir / "other")], capture_output=True
        )
        assert other.returncode == 0
        blob = (fresh.workdir / "other.pub").read_text().split()[1]
        forged = re.sub(r"#SHA256:[^#]+", "#" + invite.fingerprint(blob), line)
        laptop_before = laptop_state(lab)
        done = add(lab, fresh.password, forged)
        assert done.returncode == 5, done.stderr
        assert "does not match the invite: refusing" in done.stderr
        assert laptop_state(lab) == laptop_before
        assert init.proc.poll() is None
    finally:
        init.stop()


def test_ctrl_c_while_the_laptop_waits_for_the_server(lab, fresh):
    fresh.home.stop_miniupnpd()  # the router stays silent: init's finish takes --timeout
    # 8 s: the laptop is still waiting when Ctrl-C comes, a second after the key login.
    init = Init(lab, fresh, "--timeout", "8")
    try:
        line = init.invite()
        laptop = lab.laptop_popen(
            ["sshpass", "-p", fresh.password, *lab.nbremote_argv("add", NAME, "--invite", line)],
            env=lab.nbremote_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while f"first key login of {ALICE} (from" not in init.stderr and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        os.killpg(laptop.pid, signal.SIGINT)
        out, err = laptop.communicate(timeout=60)
        assert laptop.returncode != 0, err
        assert f"stopped waiting for {NAME} to finish (Ctrl-C): your key is installed there" in err
        assert (
            not (lab.user(LAPTOP_USER).home / ".config/nbremote/hosts.toml").exists()
            or NAME not in (lab.user(LAPTOP_USER).home / ".config/nbremote/hosts.toml").read_text()
        )
        assert init.finish(120) == 0, init.stderr  # the server goes on without the laptop
    finally:
        init.stop()


def test_no_sshd_running_changes_nothing(lab, fresh):
    os.kill(lab.sshd_pid(), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while lab.sshd_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    digest = etc_ssh_digest(lab.server_etc_ssh)
    done = server_cli(lab, "init", "--yes", "--allow-user", ALICE, state_dir=fresh.state)
    assert done.returncode == 1
    assert "sshd is not running: init changes nothing without it" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == digest
    lab.ensure_sshd()


def test_init_for_a_user_that_does_not_exist_changes_nothing(lab, fresh):
    digest = etc_ssh_digest(lab.server_etc_ssh)
    done = server_cli(lab, "init", "--yes", "--allow-user", "nbr-nobody", state_dir=fresh.state)
    assert done.returncode == 2
    assert "there is no user 'nbr-nobody'" in done.stderr
    assert etc_ssh_digest(lab.server_etc_ssh) == digest
