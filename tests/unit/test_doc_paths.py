"""The folders the docs name are the ones the code uses, on Linux and on macOS."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from nbremote import paths
from nbremote.server import steps as server_steps

REPO = Path(__file__).resolve().parents[2]
PAGES = {name: (REPO / name).read_text() for name in ("README.md", "docs/how-it-works.md", "docs/security.md")}


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_macos_config_folder_is_the_documented_one(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.config_dir() == tmp_path / "Library" / "Application Support" / "nbremote"
    for name in ("README.md", "docs/how-it-works.md", "docs/security.md"):
        assert "~/Library/Application Support/nbremote" in PAGES[name], name


def test_runtime_folder_without_xdg_is_under_tmpdir_as_documented(monkeypatch, tmp_path):
    # macOS sets no XDG_RUNTIME_DIR and a per-user TMPDIR under /var/folders.
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert paths.runtime_dir() == tmp_path / f"nbremote-{os.getuid()}"
    for name in ("README.md", "docs/how-it-works.md", "docs/security.md"):
        assert "$TMPDIR/nbremote-UID" in PAGES[name], name


def test_wan_ip_record_path_as_documented(monkeypatch, tmp_path):
    monkeypatch.delenv(server_steps.STATE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setattr(server_steps.system, "is_root", lambda: True)
    assert server_steps.state_dir() / "wan-ip.json" == Path("/var/lib/nbremote/wan-ip.json")
    monkeypatch.setattr(server_steps.system, "is_root", lambda: False)
    assert server_steps.state_dir() / "wan-ip.json" == tmp_path / ".local/state/nbremote-server/wan-ip.json"
    readme = _flat(PAGES["README.md"])
    assert (
        "`/var/lib/nbremote/wan-ip.json` when run as root, else in `~/.local/state/nbremote-server/wan-ip.json`"
        in readme
    )
