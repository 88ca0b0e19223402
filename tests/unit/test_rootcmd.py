"""The "needs root" hints run as printed, through the real sudo.

A user who installed nbremote in a venv (the README's ~/.nbremote) and runs a server
command without root is told `sudo … server firewall`; sudo searches its own
secure_path, not the user's PATH, so the hint must name that nbremote by its full path.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nbremote.server import rootcmd

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def venv_like(tmp_path):
    """An `nbremote` script in a bin folder outside sudo's secure_path, usable by `nobody`."""
    top = Path(tempfile.mkdtemp(prefix="nbremote-rootcmd-"))
    top.chmod(0o755)
    (top / "bin").mkdir(mode=0o755)
    script = top / "bin" / "nbremote"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(SRC)!r})\nfrom nbremote.cli import main\nmain()\n"
    )
    script.chmod(0o755)
    (top / "home").mkdir(mode=0o777)
    yield top
    shutil.rmtree(top)


def test_the_full_path_when_sudo_would_not_find_it(venv_like, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(venv_like / "bin" / "nbremote"), "server", "init"])
    assert (
        rootcmd.command("server", "init", root=False, path="/usr/bin:/bin")
        == f"sudo {venv_like}/bin/nbremote server init"
    )


def test_the_short_name_when_sudo_finds_this_same_program(venv_like, monkeypatch):
    linked = venv_like / "sbin"
    linked.mkdir()
    (linked / "nbremote").symlink_to(venv_like / "bin" / "nbremote")
    monkeypatch.setattr(sys, "argv", [str(venv_like / "bin" / "nbremote")])
    assert rootcmd.command("server", "init", root=False, path=str(linked)) == "sudo nbremote server init"
    assert rootcmd.command("server", "init", root=True, path=str(linked)) == "nbremote server init"


def test_secure_path_is_read_from_sudoers(tmp_path):
    sudoers = tmp_path / "sudoers"
    sudoers.write_text('Defaults\tenv_reset\nDefaults\tsecure_path="/a:/b"\n')
    assert rootcmd.secure_path(str(sudoers)) == "/a:/b"
    assert rootcmd.secure_path(str(tmp_path / "none")) == rootcmd.DEFAULT_SECURE_PATH


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("sudo") or not shutil.which("setpriv"),
    reason="needs root, sudo and setpriv (scripts/test.sh installs sudo)",
)
def test_the_needs_root_hint_runs_as_printed_under_sudo(venv_like):
    env = {"PATH": f"{venv_like}/bin:/usr/bin:/bin", "HOME": str(venv_like / "home"), "LC_ALL": "C.UTF-8"}
    refused = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "nbremote", "server", "firewall"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "firewall needs root" in refused.stderr, refused.stderr
    hint = re.search(r"hint: run it with sudo: `(.*)`", refused.stderr).group(1)
    assert hint == f"sudo {venv_like}/bin/nbremote server firewall"
    # Run it as printed (with --help, so that this machine's firewall is left alone).
    ran = subprocess.run(shlex.split(hint) + ["--help"], env=env, capture_output=True, text=True)
    assert ran.returncode == 0 and "Usage: nbremote server firewall" in ran.stdout, ran.stderr
    if not shutil.which("nbremote", path=rootcmd.secure_path()):
        # What the hint said before: sudo does not find the venv's nbremote.
        bare = subprocess.run(
            ["sudo", "nbremote", "server", "firewall", "--help"], env=env, capture_output=True, text=True
        )
        assert bare.returncode != 0 and "command not found" in bare.stderr
