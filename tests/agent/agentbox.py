"""An AgentBox: the real agent on this machine in a private world of its own.

Each box has HOME, XDG dirs and TMUX_TMPDIR of its own, so tests never see the
user's files or tmux server, nor each other's. Every process the agent starts
inherits XDG_STATE_HOME=<the box's own dir>; cleanup() finds them by that mark
in /proc/PID/environ and kills them, with the box's tmux server, whatever
state the test left.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nbremote import agentlink
from nbremote.agentlink import AgentCall

VENV_BIN = Path(sys.executable).parent
HAVE_JUPYTER = (VENV_BIN / "jupyter-lab").exists()
HAVE_TMUX = shutil.which("tmux") is not None


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def children(pid: int) -> list[int]:
    """Every descendant of pid, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def is_jupyter(pid: int) -> bool:
    """Jupyter itself (python running the jupyter-lab script), not tmux's copy of the command line."""
    words = cmdline(pid).split()
    return len(words) > 1 and Path(words[1]).name in ("jupyter-lab", "jupyter-notebook")


def api(port: int, path: str, token: str | None = None, method: str = "GET") -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"token {token}"} if token else {}
        conn.request(method, path, body=b"{}" if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None
    finally:
        conn.close()


class AgentBox:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.work = self.home / "work"
        self.state = root / "state"
        self.data = root / "data"
        self.work.mkdir(parents=True)
        # tmux's socket path must stay under ~104 bytes; pytest's tmp paths can be long.
        self.tmux_tmpdir = Path(tempfile.mkdtemp(prefix="nbt-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "JUPYTER_", "TMUX", "CONDA_"))}
        self.env.update(
            HOME=str(self.home),
            XDG_STATE_HOME=str(self.state),
            XDG_DATA_HOME=str(self.data),
            XDG_CONFIG_HOME=str(root / "config"),
            XDG_CACHE_HOME=str(root / "cache"),
            XDG_RUNTIME_DIR=str(root / "run"),
            TMUX_TMPDIR=str(self.tmux_tmpdir),
            PATH=f"{VENV_BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        )
        (root / "run").mkdir(mode=0o700)
        self.mark = f"XDG_STATE_HOME={self.state}\0".encode()

    # --- calling the agent -------------------------------------------------------

    def call(self, op: str, args: dict, *, environ: dict | None = None, on_event=None, timeout: float = 60) -> dict:
        """One request to a fresh agent process; environ replaces the box's own environment."""
        agent = AgentCall(
            agentlink.local_argv, where="this machine", on_ssh_failure=None, hello_timeout=30, env=environ or self.env
        )
        return agent.request(op, args, on_event=on_event, timeout=timeout)

    def up(
        self, directory: str | Path | None = None, *, environ: dict | None = None, **args
    ) -> tuple[dict, list[tuple[str, dict]]]:
        """The reply and the events before it; args go to the agent (env=, mode=, timeout=)."""
        events: list[tuple[str, dict]] = []
        args = {"dir": str(directory or self.work), "mode": "lab", "timeout": 60, **args}
        reply = self.call("up", args, environ=environ, on_event=lambda name, data: events.append((name, data)))
        return reply, events

    def down(self, directory: str | Path | None = None) -> dict:
        return self.call("down", {"dir": str(directory or self.work)})

    # --- looking at what it left -------------------------------------------------

    @property
    def agent_state(self) -> Path:
        return self.state / "nbremote"

    def records(self) -> list[dict]:
        folder = self.agent_state / "servers"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def runtime_dir(self) -> Path:
        return self.data / "jupyter" / "runtime"

    def processes(self) -> list[int]:
        """Live processes started under this box (they carry its XDG_STATE_HOME)."""
        mine = os.getpid()
        return [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit()
            and int(p.name) != mine
            and self.mark in _environ(int(p.name))
            and pid_alive(int(p.name))
        ]

    def tmux(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", *args], env=self.env, capture_output=True, text=True, timeout=10)

    def tmux_sessions(self) -> list[str]:
        done = self.tmux("list-sessions", "-F", "#{session_name}")
        return done.stdout.split() if done.returncode == 0 else []

    def assert_nothing_left(self) -> None:
        assert self.records() == []
        tokens = self.agent_state / "tokens"
        assert not tokens.exists() or list(tokens.iterdir()) == []
        assert wait_gone(self.processes(), 10), f"processes left: {[cmdline(p) for p in self.processes()]}"
        assert self.tmux_sessions() == []

    def cleanup(self) -> None:
        self.tmux("kill-server")
        for signum in (signal.SIGTERM, signal.SIGKILL):
            pids = self.processes()
            for pid in pids:
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass
            if wait_gone(pids, 3):
                break
        shutil.rmtree(self.tmux_tmpdir, ignore_errors=True)
