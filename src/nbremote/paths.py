"""Where the client keeps its files. Every directory is private (0700)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nbremote.errors import NbremoteError


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


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return _private(Path(base) / "nbremote")


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
