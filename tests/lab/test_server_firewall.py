"""`nbremote server firewall` with real nftables in the server's namespace, its
/etc a private copy: from the laptop only the ssh port answers; --remove puts
the ruleset and /etc/nftables.conf back as they were."""
from __future__ import annotations

import time

import pytest
from netlab import ALICE, BOB, SERVER_ADDR
from serverlab import key_login, private_etc, server_cli, tcp_open

OTHER_PORT = 8765


@pytest.fixture
def etc(lab, tmp_path):
    with private_etc(lab, tmp_path) as copy:
        yield copy
    lab.server_exec(["nft", "delete", "table", "inet", "nbremote"])


@pytest.fixture
def other_listener(lab):
    proc = lab.server_popen(["python3", "-m", "http.server", "--bind", SERVER_ADDR, str(OTHER_PORT)], user=BOB)
    deadline = time.monotonic() + 10
    while f":{OTHER_PORT}" not in lab.server_exec(["ss", "-Htln"]).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    yield
    proc.kill()
    proc.wait()


def ruleset(lab) -> str:
    return lab.server_exec(["nft", "list", "ruleset"]).stdout


def test_only_the_ssh_port_answers_and_remove_restores_the_ruleset(lab, etc, other_listener, tmp_path):
    state = tmp_path / "state"
    conf_before = (etc / "nftables.conf").read_bytes()
    rules_before = ruleset(lab)
    assert tcp_open(lab, OTHER_PORT) and tcp_open(lab, 22)

    done = server_cli(lab, "firewall", "--yes", state_dir=state)
    assert done.returncode == 0, done.stderr
    assert "allow 22/tcp, drop other inbound" in done.stderr
    assert "no Jupyter port opened" in done.stderr
    assert tcp_open(lab, 22) and key_login(lab, 22).returncode == 0
    assert not tcp_open(lab, OTHER_PORT)
    conf = (etc / "nftables.conf").read_text()
    assert conf.startswith(conf_before.decode()) and "table inet nbremote" in conf
    assert lab.server_exec(["nft", "-c", "-f", "/etc/nftables.conf"]).returncode == 0

    again = server_cli(lab, "firewall", "--yes", state_dir=state)
    assert again.returncode == 0 and "already active" in again.stderr

    removed = server_cli(lab, "firewall", "--remove", state_dir=state)
    assert removed.returncode == 0, removed.stderr
    assert ruleset(lab) == rules_before
    assert (etc / "nftables.conf").read_bytes() == conf_before
    assert tcp_open(lab, OTHER_PORT)


def test_harden_after_firewall_moves_the_open_port_with_sshd(lab, etc, tmp_path):
    state = tmp_path / "state"
    assert server_cli(lab, "firewall", "--yes", state_dir=state).returncode == 0
    done = server_cli(lab, "harden", "--port", "22222", "--allow-user", ALICE, "--yes", state_dir=state)
    assert done.returncode == 0, done.stderr
    assert "firewall now allows 22222/tcp instead of 22/tcp" in done.stderr
    assert key_login(lab, 22222).returncode == 0
    assert server_cli(lab, "restore", state_dir=state).returncode == 0
    assert server_cli(lab, "firewall", "--remove", state_dir=state).returncode == 0


def test_firewall_dry_run_changes_nothing(lab, etc, tmp_path):
    before = ruleset(lab)
    done = server_cli(lab, "firewall", "--dry-run", state_dir=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tcp dport { 22 } accept" in done.stdout
    assert ruleset(lab) == before
