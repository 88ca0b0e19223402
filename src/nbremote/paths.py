"""Where the client keeps its files. Every directory is private (0700)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

from nbremote.errors import NbremoteError

T = TypeVar("T")


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # In a shared /tmp another user could have made the directory first.
    if path.stat().st_uid != os.getuid():
        raise NbremoteError(
            f"{path} belongs to another user",
            hint="remove it, or set XDG_RUNTIME_DIR to a private directory",
        )
    os.chmod(path, 0o700)  # an existing directory may have looser bits
    return path


def _state_base() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "nbremote"


def state_dir() -> Path:
    return _private(_state_base())


def state_file(name: str) -> Path:
    """Where state_dir() keeps NAME, without creating the folder: a read must not make it."""
    return _state_base() / name


def read_records(path: Path, make: Callable[..., T]) -> dict[str, T]:
    """A JSON object of records, each built with make(**fields); a missing or broken file is
    empty, and a record another version wrote (make refuses its fields) is forgotten."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    records = {}
    for key, value in raw.items() if isinstance(raw, dict) else []:
        try:
            records[key] = make(**value)
        except TypeError:
            continue
    return records


def runtime_dir() -> Path:
    """Control sockets live here; kept short because a Unix socket path has ~104 bytes."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return _private(Path(xdg) / "nbremote")
    return _private(Path(tempfile.gettempdir()) / f"nbremote-{os.getuid()}")


def write_private(path: Path, text: str) -> None:
    """Atomic replace, mode 0600 from creation on (the file may hold tokens)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
