"""The iptables undo runs every step, then puts the files back, even when a restore fails.

Through the argv seam (`Iptables(run=)`): iptables-save/-restore answer from a ruleset kept per
family, and the restores named in `fail` refuse, as a kernel without a module or a held xtables
lock makes them. The lab's test_server_firewall.py runs the same code with the real tools.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nbremote.errors import NbremoteError
from nbremote.server import firewall

LIVE = {
    "iptables": "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p udp -j ACCEPT\nCOMMIT\n",
    "ip6tables": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
}


class Xtables:
    """iptables-save and iptables-restore for both families; `fail` holds the n-th restores
    (1-based, counting only real ones, not --test) that exit 1."""

    def __init__(self, fail: set[int]) -> None:
        self.rules = dict(LIVE)
        self.fail = fail
        self.restores = 0

    def __call__(self, argv, *, input=None, **_):
        tool, _, verb = argv[0].rpartition("-")
        if verb == "save":
            return subprocess.CompletedProcess(argv, 0, self.rules[tool], "")
        assert verb == "restore", argv
        if "--test" in argv:
            return subprocess.CompletedProcess(argv, 0, "", "")
        self.restores += 1
        if self.restores in self.fail:
            return subprocess.CompletedProcess(argv, 1, "", f"{tool}-restore: line 2 failed\n")
        self.rules[tool] = input
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def etc(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(firewall.system, "which", lambda name: f"/usr/sbin/{name}")
    etc = tmp_path / "iptables"
    etc.mkdir()
    (etc / "rules.v4").write_text("# the admin's rules\n" + LIVE["iptables"])
    return etc


def _files(etc: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(etc.iterdir())}


def test_a_failing_restore_puts_the_other_family_and_the_files_back(etc):
    before = _files(etc)
    tables = Xtables(fail={2})  # iptables swapped, then ip6tables-restore refuses
    with pytest.raises(NbremoteError) as caught:
        firewall.Iptables(etc=etc, run=tables).apply(2222)
    assert caught.value.message == "ip6tables-restore rejected the rules"
    assert tables.rules == LIVE
    assert _files(etc) == before


def test_a_failing_undo_step_still_runs_the_rest_and_the_file_rollback(etc):
    before = _files(etc)
    tables = Xtables(fail={2, 3})  # ip6tables-restore refuses, then so does the iptables undo
    with pytest.raises(NbremoteError) as caught:
        firewall.Iptables(etc=etc, run=tables).apply(2222)
    error = caught.value
    assert error.message == "the firewall change failed and could not be fully undone"
    assert error.details == [
        "the change: ip6tables-restore rejected the rules",
        "iptables ruleset: iptables-restore rejected the rules; iptables-restore: line 2 failed",
    ]
    assert "firewall --remove" in error.hint
    assert _files(etc) == before, "the files are put back although a ruleset could not be"
    assert tables.rules["ip6tables"] == LIVE["ip6tables"]
    assert firewall.CHAIN in tables.rules["iptables"], "the one step that failed is named, not hidden"
