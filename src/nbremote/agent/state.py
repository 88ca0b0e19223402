"""The agent's files on the server: one record per managed Jupyter, kept private.

Layout under ``$XDG_STATE_HOME/nbremote`` (default ``~/.local/state/nbremote``),
every directory 0700 and every file 0600, because records hold Jupyter tokens:

    lock                 serialises find-or-start, so two clients get one server
    servers/KEY.json     what we started: dir, pid, port, token, launcher
    tokens/KEY           the token, for JUPYTER_TOKEN_FILE (never on a command line)
    logs/KEY.log         Jupyter's output, kept after it stops
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Iterator

    from .protocol import Doc


def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "nbremote")


def private_dir(*parts: str) -> str:
    path = os.path.join(state_dir(), *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    # makedirs honours umask and leaves existing directories alone: enforce.
    os.chmod(path, 0o700)
    return path


def key_for(directory: str) -> str:
    return hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]


def write_private(path: str, text: str) -> None:
    """Write atomically with mode 0600 from the first byte on."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked() -> Iterator[None]:
    fd = os.open(os.path.join(private_dir(), "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_path(key: str) -> str:
    return os.path.join(private_dir("servers"), key + ".json")


def read_object(path: str) -> Doc | None:
    """The JSON object in path; None when the file is missing, unreadable, broken or not an object."""
    try:
        with open(path) as handle:
            doc: object = json.load(handle)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def load_record(key: str) -> Doc | None:
    return read_object(record_path(key))


def save_record(record: Doc) -> None:
    write_private(record_path(record["key"]), json.dumps(record, indent=1, sort_keys=True))


def all_records() -> list[Doc]:
    folder = private_dir("servers")
    records = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            record = load_record(name[: -len(".json")])
            if record is not None:
                records.append(record)
    return records


def forget(key: str) -> None:
    for path in (record_path(key), os.path.join(private_dir("tokens"), key)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
