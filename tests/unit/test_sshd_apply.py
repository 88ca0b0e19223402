"""`Sshd.plan` and `Sshd.apply` without root, against a temporary etc dir, in under a second each.

The real sshd binary reads the temporary config (`sshd -t`, `sshd -T -f`); the seams are the ones
Sshd has: `etc_ssh=` (the config, host key and backup live there) and `service=` (what reloads
sshd: here it records the call and no sshd listens, so a reload never "takes"). The lab tests
(tests/lab/test_server_harden.py) prove the whole change against a live sshd.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nbremote.errors import NbremoteError
from nbremote.localnet import any_free_port
from nbremote.server import sshd as sshd_module
from nbremote.server.sshd import Sshd

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin")
pytestmark = pytest.mark.skipif(SSHD is None, reason="needs OpenSSH's sshd binary (openssh-server)")


class RecordingService:
    """Reloads nothing: the seam that stands for systemd or the init script."""

    name = "test service"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reload(self) -> None:
        self.calls.append("reload")

    def start(self) -> None:
        self.calls.append("start")


def _user() -> str:
    # harden refuses root; a test run as root names an account that exists on every Debian.
    user = getpass.getuser()
    return "nobody" if user == "root" else user


@pytest.fixture
def etc(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(sshd_module.system, "is_root", lambda: True)
    etc = tmp_path / "ssh"
    (etc / "sshd_config.d").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "ssh_host_ed25519_key")], check=True)
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True)
    (keys / _user()).write_text((tmp_path / "id.pub").read_text())
    (etc / "sshd.pid").write_text(f"{os.getpid()}\n")  # a live pid: "sshd is running"
    (etc / "sshd_config").write_text(
        f"Include {etc}/sshd_config.d/*.conf\n"
        f"HostKey {etc}/ssh_host_ed25519_key\n"
        f"PidFile {etc}/sshd.pid\n"
        "StrictModes no\n"
        f"AuthorizedKeysFile {keys}/%u\n"
    )
    return etc


def _tree(etc: Path) -> dict[str, str]:
    return {
        str(p.relative_to(etc)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(etc.rglob("*"))
    }


def _sshd(etc: Path, service: RecordingService | None = None) -> Sshd:
    return Sshd(etc_ssh=etc, service=service or RecordingService(), binary=SSHD, reload_timeout=0.1)


def test_plan_works_out_the_drop_in_and_touches_nothing(etc):
    before = _tree(etc)
    port = any_free_port()
    plan = _sshd(etc).plan(port=port, allow_users=(_user(),))
    assert [c.path for c in plan.changes] == [etc / "sshd_config.d" / sshd_module.DROPIN_NAME]
    assert not plan.already_done and not plan.new_host_key
    assert f"+Port {port}" in plan.diff() and f"+AllowUsers {_user()}" in plan.diff()
    assert plan.keys == {_user(): str(etc.parent / "keys" / _user())}
    assert _tree(etc) == before


def test_plan_refuses_a_user_without_a_key_and_touches_nothing(etc):
    (etc.parent / "keys" / _user()).unlink()
    before = _tree(etc)
    with pytest.raises(NbremoteError) as caught:
        _sshd(etc).plan(port=any_free_port(), allow_users=(_user(),))
    assert caught.value.message == f"refusing to turn password login off: {_user()} would have no working key"
    assert _tree(etc) == before


def test_a_reload_that_never_takes_puts_every_file_back(etc):
    before = _tree(etc)
    service = RecordingService()
    sshd = _sshd(etc, service)
    plan = sshd.plan(port=any_free_port(), allow_users=(_user(),))
    steps: list[str] = []
    with pytest.raises(NbremoteError) as caught:
        sshd.apply(plan, step=steps.append, checkpoint=steps.append)
    assert caught.value.message.startswith(f"sshd did not listen on port {plan.hardening.port}")
    assert steps == ["backup", "write", "validate", "sshd config validated and backed up", "rollback"]
    assert service.calls == ["reload", "reload"], "the new config, then the restored one"
    assert "restoring failed too" in caught.value.details[-1]  # the old port has no sshd either
    assert _tree(etc) == before, "the drop-in and the backup are gone again"


def test_a_hardening_already_in_place_is_reported_and_nothing_reloads(etc):
    service = RecordingService()
    sshd = _sshd(etc, service)
    plan = sshd.plan(port=any_free_port(), allow_users=(_user(),))
    for change in plan.changes:
        change.path.write_bytes(change.new)
    before = _tree(etc)
    again = sshd.plan(port=plan.hardening.port, allow_users=(_user(),))
    assert again.already_done
    result = sshd.apply(again)
    assert result.already and service.calls == []
    assert _tree(etc) == before
