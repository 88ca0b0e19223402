"""A warm `up HOST`'s `ssh -O forward`, begun by the console script before the client's modules
are imported (their import, most of it the creation of dataclasses, is about 60 ms, longer
than that ssh's own run).

`up` remembers, for the words it was given, the forward it put up through a master and what
must hold for it to be put back the same way: the master's control socket there, no keeper of
the session alive, the session's record as it was (`hint`). The next `up` with those words begins that very argv at once
(`begin`); ssh.Connection.forward takes it (`claim`) when the ordinary path asks for the same
argv, so the decision stays `up`'s own (session.reattach_live). A forward that path did not
ask for is cancelled (`settle`) before the CLI goes on."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

from nbremote import logs, paths
from nbremote.errors import NbremoteError

log = logs.get(__name__)

# The words after `up` when the console script ran this command (entry.main), else None.
words: list[str] | None = None
_begun: tuple[list[str], subprocess.Popen[str]] | None = None


def held_pid(path: Path | str) -> int | None:
    """The pid in a keeper's pid file while its keeper holds the file's lock."""
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None
    return None


def _hint_path(up_words: list[str]) -> Path:
    name = hashlib.sha256("\0".join(up_words).encode()).hexdigest()[:20]
    return paths.runtime_dir() / f"forward-{name}.json"


def hint(
    argv: list[str], control_path: Path, keeper_pid_file: Path, record: tuple[Path, str, dict[str, object]]
) -> None:
    """Remember the forward this command's words put up (see the module's text); record: the
    records' file, the session's key there and the fields of its record the forward was made
    from (a record changed or removed since, by `down` or another `up`, begins nothing)."""
    if words is None:
        return
    records, key, fields = record
    text = json.dumps(
        {
            "argv": argv,
            "control": str(control_path),
            "keeper": str(keeper_pid_file),
            "records": str(records),
            "key": key,
            "fields": fields,
        }
    )
    try:
        paths.write_private(_hint_path(words), text)
    except (OSError, NbremoteError) as exc:  # the next `up` takes the ordinary path
        log.debug("no forward hint: %s", exc)


def begin(up_words: list[str]) -> None:
    """Begin the forward remembered for these words, if its master may be alive and no keeper
    holds the session."""
    global words, _begun
    words = up_words
    try:
        remembered = json.loads(_hint_path(up_words).read_text())
        argv, control, keeper = remembered["argv"], remembered["control"], remembered["keeper"]
        current = json.loads(Path(remembered["records"]).read_text()).get(remembered["key"])
        fields = remembered["fields"]
        if not isinstance(current, dict) or any(current.get(name) != value for name, value in fields.items()):
            return
    except (OSError, ValueError, KeyError, TypeError, AttributeError, NbremoteError):
        return
    if not isinstance(argv, list) or not os.path.exists(control) or held_pid(keeper) is not None:
        return
    log.debug("run %s", " ".join(argv))
    env = dict(os.environ, LC_ALL="C")  # as ssh.ssh_env
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
    except OSError:
        return  # no ssh: the ordinary path says so
    _begun = (argv, process)


def claim(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """The begun forward's outcome, when it is this argv."""
    global _begun
    if _begun is None or _begun[0] != argv:
        return None
    process = _begun[1]
    _begun = None
    out, err = process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def settle() -> None:
    """Cancel a begun forward that `up` did not take: its decision was another."""
    global _begun
    if _begun is None:
        return
    argv, process = _begun
    _begun = None
    process.communicate()
    if process.returncode == 0:
        at = argv.index("-O") + 1  # ssh -O forward -L SPEC: the same with -O cancel
        cancel = [*argv[:at], "cancel", *argv[at + 1 :]]
        log.debug("run %s", " ".join(cancel))
        subprocess.run(cancel, stdin=subprocess.DEVNULL, capture_output=True, text=True)
