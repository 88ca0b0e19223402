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
import shutil
import sys
from pathlib import Path

from nbremote.errors import NbremoteError
from nbremote.server import firewall, rootcmd
from nbremote.server.files import Original
from nbremote.server.guardpipe import READY, take_out_verify_key
from nbremote.server.sshd import Sshd, first


def _remove_temp_files(directory: Path) -> None:
    """What an atomic write killed before its rename leaves behind."""
    for leftover in directory.glob(".*.nbremote-tmp"):
        leftover.unlink(missing_ok=True)


def recover(state: dict) -> list[str]:
    """Undo an interrupted harden; return what was done, for the log."""
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
        _say(
            f"nbremote server harden was interrupted, and putting sshd back failed: {exc}; "
            f"run `{rootcmd.command('server', 'restore')}`"
        )
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
