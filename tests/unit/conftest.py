"""Every unit test runs with its own HOME and XDG dirs, so none can touch the real ones."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


class Isolated:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.state = root / "state"  # left absent: tests check nothing was written there
        self.runtime = root / "run"  # exists, or paths.runtime_dir would fall back to the shared /tmp


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Isolated:
    dirs = Isolated(tmp_path)
    dirs.home.mkdir()
    dirs.runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(dirs.home))
    monkeypatch.setenv("XDG_STATE_HOME", str(dirs.state))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(dirs.runtime))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_TOKEN", "TMUX"):
        monkeypatch.delenv(name, raising=False)
    return dirs


def _refuse(*args, **kwargs):
    raise AssertionError(f"started a process: {args[0] if args else kwargs}")


@pytest.fixture
def no_processes(monkeypatch):
    """Fails the test if the code under test starts any process (ssh, the agent, a browser)."""
    monkeypatch.setattr(subprocess, "Popen", _refuse)


@pytest.fixture
def nothing_runs(no_processes, isolated):
    """No process, and nothing written to the state or runtime dir."""
    yield
    assert not isolated.state.exists(), "nothing may be written to the state dir"
    assert list(isolated.runtime.iterdir()) == [], "nothing may be written to the runtime dir"
