"""harden's end of the pipe to its guard (guard.py, run as a process of its own).

Apart from the guard process so that sshd.py, which starts the guard, and guard.py, which
puts sshd back through Sshd, do not import each other.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from nbremote.errors import NbremoteError
from nbremote.server.files import Original, atomic_write

READY = "ready"


class Guard:
    """harden's end of the pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, timeout: float = 15.0) -> "Guard":
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbremote.server.guard"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
        assert proc.stdout is not None
        try:
            ready = _readline(proc.stdout, timeout)
        except TimeoutError:
            ready = ""
        if ready.strip() != READY:
            proc.kill()
            proc.wait()
            raise NbremoteError(
                "could not start the guard that undoes harden if it is interrupted; nothing was changed",
                details=[f"{sys.executable} -m nbremote.server.guard"],
            )
        proc.stdout.close()
        return cls(proc)

    def _send(self, doc: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()

    def expect(self, etc_ssh: Path | None, originals: list[Original], *, backup: Path | None) -> None:
        """The files about to change, as they are; backup: the backup directory this run
        creates; etc_ssh: the sshd whose config they are (reloaded after putting them back)."""
        self._send(
            {
                "etc_ssh": str(etc_ssh) if etc_ssh else None,
                "originals": [o.to_json() for o in originals],
                "backup": str(backup) if backup else None,
            }
        )

    def verify_key(self, original: Original, added: bytes, tag: str, directory: Path) -> None:
        """authorized_keys is about to get the verification key, kept in directory."""
        self._send(
            {
                "verify_key": {
                    "original": original.to_json(),
                    "added": base64.b64encode(added).decode(),
                    "tag": tag,
                    "directory": str(directory),
                }
            }
        )

    def firewall_moving(self, old_port: int) -> None:
        """The firewall is about to allow the new port next to old_port, its only one so far."""
        self._send({"firewall_port": old_port})

    def verify_key_gone(self) -> None:
        self._send({"verify_key": None})

    def done(self) -> None:
        """harden has finished (changed or put back): the guard has nothing to do."""
        try:
            self._send({"done": True})
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it is gone already: there was nothing for it to do
        self.proc.wait()


def _readline(stream: IO[str], timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError
    return stream.readline()


def take_out_verify_key(original: Original, added: bytes, tag: str) -> None:
    """authorized_keys back as it was; only our line out if someone else wrote to it meanwhile."""
    try:
        current = original.path.read_bytes()
    except FileNotFoundError:
        return
    if current == added:
        original.put_back()
    elif tag.encode() in current:
        atomic_write(
            original.path, b"".join(line for line in current.splitlines(keepends=True) if tag.encode() not in line)
        )
