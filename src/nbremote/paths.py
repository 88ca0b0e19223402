"""Where nbremote keeps its files, on Linux and macOS, and how it writes them.

The one place that resolves the config, state, cache and runtime directories (the agent, which
runs on the server with the stdlib alone, has its own in agent/state.py) and the one atomic write
for the client and the server set-up. Every directory made here is private (0700).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from nbremote.errors import NbremoteError

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

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


def _macos() -> bool:
    return sys.platform == "darwin"


def config_dir() -> Path:
    """Host profiles: macOS's Application Support, else $XDG_CONFIG_HOME (~/.config)."""
    if _macos():
        return Path.home() / "Library" / "Application Support" / "nbremote"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "nbremote"


def cache_dir() -> Path:
    """What can be lost at no cost (completion's job names): ~/Library/Caches, else $XDG_CACHE_HOME."""
    if _macos():
        return Path.home() / "Library" / "Caches" / "nbremote"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nbremote"


def _state_base() -> Path:
    # macOS has no folder for state apart from Application Support, which holds the profiles:
    # there too the state stays where every earlier version kept it.
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "nbremote"


def state_dir() -> Path:
    return _private(_state_base())


def state_file(name: str) -> Path:
    """Where state_dir() keeps NAME, without creating the folder: a read must not make it."""
    return _state_base() / name


def read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in path; None when the file is missing, unreadable, broken or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_records(path: Path, make: Callable[..., T]) -> dict[str, T]:
    """A JSON object of records, each built with make(**fields); a missing or broken file is
    empty, and a record another version wrote (make refuses its fields) is forgotten."""
    records = {}
    for key, value in (read_object(path) or {}).items():
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
    return _private(Path(temp_root()) / f"nbremote-{os.getuid()}")


def temp_root() -> str:
    """The folder tempfile.gettempdir() chooses (TMPDIR, TEMP or TMP, else /tmp, /var/tmp,
    /usr/tmp, else the working directory: the first one a file can be made in), without
    importing tempfile (with shutil and random), which `up` would pay before its first ssh."""
    for candidate in [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")] + ["/tmp", "/var/tmp", "/usr/tmp"]:
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return os.path.abspath(candidate)
    return os.getcwd()


def write_private(path: Path, text: str) -> None:
    """Atomic replace, mode 0600 from creation on (the file may hold tokens)."""
    atomic_write(path, text.encode(), mode=0o600)


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new 0600 file `.NAME.RANDOM.nbremote-tmp` in path's folder, as tempfile.mkstemp makes
    one (O_EXCL, no link followed), without importing tempfile (with shutil and random), which
    `up` would pay before it prints a live session's URL."""
    while True:
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.nbremote-tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue


def atomic_write(
    path: Path, data: bytes, *, mode: int | None = None, uid: int | None = None, gid: int | None = None
) -> None:
    """Replace path with data in one rename, byte for byte; keep its mode and owner unless given.

    The temporary file is 0600 from creation on and named `.NAME.*.nbremote-tmp`, which is what
    the harden guard removes after a killed write; the data and the rename are fsynced, so a
    crash leaves the old file or the new one, never half of one.
    """
    try:
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode) if mode is None else mode
        uid = st.st_uid if uid is None else uid
        gid = st.st_gid if gid is None else gid
    except FileNotFoundError:
        mode = 0o644 if mode is None else mode
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if (uid is not None and uid != os.getuid()) or (gid is not None and gid != os.getgid()):
            os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
