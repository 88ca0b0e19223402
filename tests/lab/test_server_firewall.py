"""`nbremote server firewall` in the server's namespace, its /etc a private copy,
with each backend for real: nftables; ufw (unmodified: the copy is its /etc)
when it is the active firewall; iptables, both backends, when there is no nft.
From the laptop only the ssh port answers; a second run changes nothing;
--remove puts the ruleset and the files back as they were."""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from pathlib import Path

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


def tree_digest(*paths: Path) -> str:
    """Names, modes and bytes of every file under paths (missing paths count too)."""
    h = hashlib.sha256()
    for root in paths:
        for p in sorted([root, *root.rglob("*")]) if root.exists() else [root]:
            h.update(str(p).encode())
            if p.is_file():
                h.update(oct(p.stat().st_mode).encode() + p.read_bytes())
    return h.hexdigest()


def xtables(lab, save: str = "iptables-save") -> str:
    """The IPv4 and IPv6 rulesets as iptables-save prints them, without counters and dates."""
    text = "".join(lab.server_exec([save.replace("iptables", fam, 1)]).stdout for fam in ("iptables", "ip6tables"))
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#"))


@pytest.fixture
def tables_back(lab):
    """Delete the nft tables a test left in the server's namespace (ufw and
    iptables-nft make `ip filter` and friends), whatever the test did."""
    before = set(lab.server_exec(["nft", "list", "tables"]).stdout.splitlines())
    yield
    for line in set(lab.server_exec(["nft", "list", "tables"]).stdout.splitlines()) - before:
        lab.server_exec(["nft", "delete", *line.split()])


@contextlib.contextmanager
def hidden(lab, path: str):
    """path is not there for programs on the server (bind-mounted /dev/null: not executable)."""
    done = lab.server_exec(["mount", "--bind", "/dev/null", path])
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        assert lab.server_exec(["umount", path]).returncode == 0


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


def test_ufw_when_it_is_the_active_firewall(lab, etc, tables_back, other_listener, tmp_path):
    """ufw is active with an allow-incoming policy (the previous ruleset lets 8765 in)."""
    host_ufw = tree_digest(Path("/etc/ufw"), Path("/etc/default/ufw"))
    # The reload: right after `enable` ufw's IPv6 limit chains are empty, after any
    # reload they are not. The owner's ufw as it runs day to day is the baseline.
    for argv in (["ufw", "default", "allow", "incoming"], ["ufw", "--force", "enable"], ["ufw", "reload"]):
        done = lab.server_exec(argv)
        assert done.returncode == 0, done.stderr
    try:
        files_before = tree_digest(etc / "ufw", etc / "default/ufw")
        rules_before = xtables(lab)
        assert tcp_open(lab, OTHER_PORT)

        done = server_cli(lab, "firewall", "--yes", state_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "allow 22/tcp, deny other inbound (ufw)" in done.stderr and "no Jupyter port opened" in done.stderr
        assert tcp_open(lab, 22) and key_login(lab, 22).returncode == 0
        assert not tcp_open(lab, OTHER_PORT)
        status = lab.server_exec(["ufw", "status", "verbose"]).stdout
        assert "Default: deny (incoming)" in status and re.search(
            r"^22/tcp +ALLOW IN +Anywhere +# nbremote", status, re.M
        )

        again = server_cli(lab, "firewall", "--yes", state_dir=tmp_path)
        assert again.returncode == 0 and "already active" in again.stderr

        removed = server_cli(lab, "firewall", "--remove", state_dir=tmp_path)
        assert removed.returncode == 0, removed.stderr
        assert "default incoming policy back to allow" in removed.stderr
        assert xtables(lab) == rules_before
        assert tree_digest(etc / "ufw", etc / "default/ufw") == files_before
        assert tcp_open(lab, OTHER_PORT)
    finally:
        lab.server_exec(["ufw", "--force", "disable"])
    assert tree_digest(Path("/etc/ufw"), Path("/etc/default/ufw")) == host_ufw, "the host's ufw was touched"


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_iptables_when_there_is_no_nft(lab, etc, tables_back, other_listener, tmp_path, flavour):
    # The copy of /etc is this server's: its alternatives pick the iptables backend.
    for tool in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        link = etc / "alternatives" / tool
        link.unlink()
        link.symlink_to(f"/usr/sbin/{tool.replace('tables', f'tables-{flavour}', 1)}")
    # The owner's own rule, so the filter tables exist before and must stay as they are.
    for tool in ("iptables", "ip6tables"):
        assert lab.server_exec([tool, "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"]).returncode == 0
    try:
        rules_before = xtables(lab)
        assert "-A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT" in rules_before
        with hidden(lab, "/usr/sbin/nft"):
            done = server_cli(lab, "firewall", "--yes", state_dir=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "allow 22/tcp, drop other inbound (iptables chain NBREMOTE-INPUT" in done.stderr
            assert "no Jupyter port opened" in done.stderr
            assert tcp_open(lab, 22) and key_login(lab, 22).returncode == 0
            assert not tcp_open(lab, OTHER_PORT)
            saved = (etc / "iptables/rules.v4").read_text()
            assert "-A NBREMOTE-INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in saved
            assert lab.server_exec(["iptables-restore", "--test"], input=saved).returncode == 0
            assert (etc / "iptables/rules.v6").is_file()

            again = server_cli(lab, "firewall", "--yes", state_dir=tmp_path)
            assert again.returncode == 0 and "already active" in again.stderr

            removed = server_cli(lab, "firewall", "--remove", state_dir=tmp_path)
            assert removed.returncode == 0, removed.stderr
            assert xtables(lab) == rules_before
            assert not (etc / "iptables").exists()
            assert tcp_open(lab, OTHER_PORT)
    finally:
        for tool in ("iptables", "ip6tables"):
            lab.server_exec([f"{tool}-{flavour}", "-F", "INPUT"])
            lab.server_exec([f"{tool}-{flavour}", "-X"])


def test_firewall_refusals_name_the_problem_and_change_nothing(lab, etc, tmp_path):
    rules, conf = ruleset(lab), tree_digest(etc / "nftables.conf", etc / "iptables", etc / "ufw")

    for args in (["--yes"], ["--remove"]):
        not_root = server_cli(lab, "firewall", *args, state_dir=tmp_path, user=ALICE)
        assert not_root.returncode == 1 and "firewall needs root" in not_root.stderr
        # The hint names this nbremote as sudo will find it (here `python -m nbremote`).
        assert re.search(r"`sudo (\S+ -m )?\S*nbremote server firewall`", not_root.stderr), not_root.stderr

    nothing = server_cli(lab, "firewall", "--remove", state_dir=tmp_path)
    assert nothing.returncode == 0 and "nothing to remove" in nothing.stderr

    for tool in ("iptables", "iptables-save", "iptables-restore"):
        (etc / "alternatives" / tool).unlink()
    with hidden(lab, "/usr/sbin/nft"):
        none = server_cli(lab, "firewall", "--yes", state_dir=tmp_path)
    assert none.returncode == 1 and "no firewall tool found here" in none.stderr
    assert "tried ufw, nftables, iptables" in none.stderr and "apt-get install nftables" in none.stderr

    assert ruleset(lab) == rules
    assert tree_digest(etc / "nftables.conf", etc / "iptables", etc / "ufw") == conf
