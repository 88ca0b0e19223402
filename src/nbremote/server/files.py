"""Editing system files so that every change can be undone byte for byte.

A change goes through a `Transaction`: the first time it touches a path it
keeps the original (content, mode, owner, or "did not exist"); writes are
atomic (temp file in the same directory, fsync, rename) so a crash leaves
either the old or the new file, never half of one. `rollback()` puts every
touched path back (atomic_write is the client's, in paths.py). A `Backup` is the same record kept on disk, so that
`nbremote server restore` can undo a change made by an earlier run.
"""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbremote.paths import atomic_write

__all__ = ["Backup", "Original", "Transaction", "atomic_write"]  # sshd.py and the guard write through it


@dataclass(frozen=True)
class Original:
    """A file as it was before we touched it; content None means it did not exist."""

    path: Path
    content: bytes | None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    @classmethod
    def read(cls, path: Path) -> "Original":
        try:
            st = path.lstat()
        except FileNotFoundError:
            return cls(path, None)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file: refusing to replace it")
        return cls(path, path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "content": None if self.content is None else base64.b64encode(self.content).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Original":
        content = doc["content"]
        return cls(
            Path(doc["path"]),
            None if content is None else base64.b64decode(content),
            doc["mode"],
            doc["uid"],
            doc["gid"],
        )

    def put_back(self) -> None:
        if self.content is None:
            self.path.unlink(missing_ok=True)
        else:
            atomic_write(self.path, self.content, mode=self.mode, uid=self.uid, gid=self.gid)


class Transaction:
    """Writes that can all be undone; the first original of each path wins."""

    def __init__(self) -> None:
        self.originals: dict[Path, Original] = {}

    def remember(self, path: Path) -> Original:
        if path not in self.originals:
            self.originals[path] = Original.read(path)
        return self.originals[path]

    def write(self, path: Path, data: bytes, *, mode: int | None = None) -> None:
        self.remember(path)
        atomic_write(path, data, mode=mode)

    def created(self, path: Path) -> None:
        """Record a path a tool other than us is about to create (e.g. ssh-keygen)."""
        self.remember(path)

    def rollback(self) -> list[str]:
        """Put every touched path back; return what could not be (each tried)."""
        failures = []
        for original in reversed(list(self.originals.values())):
            try:
                original.put_back()
            except OSError as exc:
                failures.append(f"{original.path}: {exc}")
        return failures


class Backup:
    """The originals of a change, kept in a directory until `restore`.

    Only the first backup is kept: a second `harden` with other options must
    not make its own output the thing `restore` goes back to.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.manifest = directory / "manifest.json"

    def exists(self) -> bool:
        return self.manifest.is_file()

    def load(self) -> list[Original]:
        doc = json.loads(self.manifest.read_text())
        return [Original.from_json(item) for item in doc["files"]]

    def save(self, originals: list[Original], note: str) -> None:
        """Add originals for paths not yet in the backup (earlier ones win)."""
        known = {o.path: o for o in self.load()} if self.exists() else {}
        for original in originals:
            known.setdefault(original.path, original)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = {"note": note, "files": [o.to_json() for o in known.values()]}
        atomic_write(self.manifest, json.dumps(doc, indent=1).encode(), mode=0o600)

    def remove(self) -> None:
        self.manifest.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass
