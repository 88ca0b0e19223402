"""The dead man's switch of `harden`: if harden dies midway, this puts sshd back.

harden rolls back by itself on any failure it sees, but not when it is killed
(SIGKILL, the OOM killer, a dropped ssh session taking its process group
along). For that it starts this module as a process of its own, in a new
session so whatever kills harden's terminal does not reach it, and writes to
it through a pipe: first the files it is about to change (as they are now),
before the throwaway verification key goes into authorized_keys that file,
and "done" once it has finished, verified or rolled back by itself.

When the pipe closes without "done", harden died between two steps. The
guard then puts every file back byte for byte (the long-lived backup too,
when this run made it), takes the verification key out again, removes
half-written temporary files, reloads sshd (or starts it, if a reload with
the unverified config killed it), and sets a firewall that harden was opening
to the new port back to the old one alone. sshd is then serving exactly the
configuration it had before, and `restore` has nothing left to do for this run.

Run as `python -m nbremote.server.guard`; it answers "ready" on stdout once
it is listening, so harden never changes anything without a guard in place.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

from nbremote.errors import NbremoteError
from nbremote.server.files import Original, atomic_write

READY = "ready"


class Guard:
    """harden's end of the pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    @classmethod
    def start(cls, timeout: float = 15.0) -> "Guard":
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "nbremote.server.guard"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=None, text=True, env=env,
                                start_new_session=True, close_fds=True)
        assert proc.stdout is not None
        try:
            ready = _readline(proc.stdout, timeout)
        except TimeoutError:
            ready = ""
        if ready.strip() != READY:
            proc.kill()
            proc.wait()
            raise NbremoteError("could not start the guard that undoes harden if it is interrupted; "
                                "nothing was changed", details=[f"{sys.executable} -m nbremote.server.guard"])
        proc.stdout.close()
        return cls(proc)

    def _send(self, doc: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()

    def expect(self, etc_ssh: Path | None, originals: list[Original], *, backup: Path | None) -> None:
        """The files about to change, as they are; backup: the backup directory this run
        creates; etc_ssh: the sshd whose config they are (reloaded after putting them back)."""
        self._send({"etc_ssh": str(etc_ssh) if etc_ssh else None, "originals": [o.to_json() for o in originals],
                    "backup": str(backup) if backup else None})

    def verify_key(self, original: Original, added: bytes, tag: str, directory: Path) -> None:
        """authorized_keys is about to get the verification key, kept in directory."""
        self._send({"verify_key": {"original": original.to_json(), "added": base64.b64encode(added).decode(),
                                   "tag": tag, "directory": str(directory)}})

    def firewall_moving(self, old_port: int) -> None:
        """The firewall is about to allow the new port next to old_port, its only one so far."""
        self._send({"firewall_port": old_port})

    def verify_key_gone(self) -> None:
        self._send({"verify_key": None})

    def done(self) -> None:
        """harden has finished (changed or put back): the guard has nothing to do."""
        try:
            self._send({"done": True})
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
        atomic_write(original.path, b"".join(line for line in current.splitlines(keepends=True)
                                             if tag.encode() not in line))


def _remove_temp_files(directory: Path) -> None:
    """What an atomic write killed before its rename leaves behind."""
    for leftover in directory.glob(".*.nbremote-tmp"):
        leftover.unlink(missing_ok=True)


def recover(state: dict) -> list[str]:
    """Undo an interrupted harden; return what was done, for the log."""
    from nbremote.server.sshd import Sshd, first  # sshd imports this module

    said = []
    key = state.get("verify_key")
    if key:
        original = Original.from_json(key["original"])
        take_out_verify_key(original, base64.b64decode(key["added"]), key["tag"])
        shutil.rmtree(key["directory"], ignore_errors=True)
        said.append(f"took the verification key out of {original.path}")
    originals = [Original.from_json(o) for o in state.get("originals", [])]
    for original in reversed(originals):
        original.put_back()
    for directory in {o.path.parent for o in originals}:
        _remove_temp_files(directory)
    if originals:
        said.append(f"put back {', '.join(str(o.path) for o in originals)}")
    if state.get("backup"):
        backup = Path(state["backup"])
        _remove_temp_files(backup)
        (backup / "manifest.json").unlink(missing_ok=True)
        try:
            backup.rmdir()
        except OSError:
            pass
    if state.get("etc_ssh"):
        sshd = Sshd(etc_ssh=Path(state["etc_ssh"]))
        if sshd.pid() is None:
            sshd.service.start()
            said.append("started sshd")
        else:
            sshd._reload(int(first(sshd.effective(), "port", "22")))
            said.append("reloaded sshd")
    if state.get("firewall_port"):
        # After sshd is back on its port: the firewall never closes a port sshd still listens on.
        from nbremote.server import firewall
        port = int(state["firewall_port"])
        firewall.choose().apply(port)
        said.append(f"the firewall allows {port}/tcp again, and no other port")
    return said


def main() -> int:
    print(READY, flush=True)
    sys.stdout.close()
    state: dict = {}
    for line in sys.stdin:
        doc = json.loads(line)
        if doc.get("done"):
            return 0
        state.update(doc)
    if not state:
        return 0
    try:
        said = recover(state)
    except (OSError, NbremoteError) as exc:
        _say(f"nbremote server harden was interrupted, and putting sshd back failed: {exc}; "
             "run `sudo nbremote server restore`")
        return 1
    _say(f"nbremote server harden was interrupted: {'; '.join(said)}")
    return 0


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal went away with harden


if __name__ == "__main__":
    sys.exit(main())
