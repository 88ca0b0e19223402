"""The agent's files on the server: one record per managed Jupyter, kept private.

Layout under ``$XDG_STATE_HOME/nbremote`` (default ``~/.local/state/nbremote``),
every directory 0700 and every file 0600, because records hold Jupyter tokens:

    lock                 serialises find-or-start, so two clients get one server
    servers/KEY.json     what we started: dir, pid, port, token, launcher
    tokens/KEY           the token, for JUPYTER_TOKEN_FILE (never on a command line)
    logs/KEY.log         Jupyter's output, kept after it stops
"""
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile


def state_dir():
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "nbremote")


def private_dir(*parts):
    path = os.path.join(state_dir(), *parts)
    os.makedirs(path, mode=0o700, exist_ok=True)
    # makedirs honours umask and leaves existing directories alone: enforce.
    os.chmod(path, 0o700)
    return path


def key_for(directory):
    return hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]


def write_private(path, text):
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
def locked():
    fd = os.open(os.path.join(private_dir(), "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_path(key):
    return os.path.join(private_dir("servers"), key + ".json")


def load_record(key):
    try:
        with open(record_path(key)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def save_record(record):
    write_private(record_path(record["key"]), json.dumps(record, indent=1, sort_keys=True))


def all_records():
    folder = private_dir("servers")
    records = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            record = load_record(name[: -len(".json")])
            if record is not None:
                records.append(record)
    return records


def forget(key):
    for path in (record_path(key), os.path.join(private_dir("tokens"), key)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
