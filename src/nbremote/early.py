"""A warm `up HOST`'s `ssh -O forward`, begun by the console script before the client's modules
are imported (their import, most of it the creation of dataclasses, is about 60 ms, longer
than that ssh's own run).

`up` remembers, for the words it was given, the forward it put up through a master and what
must hold for it to be put back the same way: the master's control socket there, no keeper of
the session alive, the session's record as it was (`hint`). The next `up` with those words begins that very argv at once
(`begin`); ssh.Connection.forward takes it (`claim`) when the ordinary path asks for the same
argv, so the decision stays `up`'s own (session.reattach_live); the one GET with the token that
followed the forward here stands for its first probe (`answered`). A forward that path did not
ask for is cancelled (`settle`) before the CLI goes on."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

from nbremote import localnet, logs, paths
from nbremote.errors import NbremoteError

log = logs.get(__name__)

# The words after `up` when the console script ran this command (entry.main), else None.
words: list[str] | None = None
_begun: _Begun | None = None  # begun, not yet taken
_taken: _Begun | None = None  # taken by ssh.Connection.forward, its GET's answer not yet asked
# The one GET's wait: a server slower than this is asked again by the ordinary path.
ANSWER_TIMEOUT = 1.0


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
    _begun = _Begun(argv, process, current.get("local_port"), current.get("token"))


def claim(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """The begun forward's outcome, when it is this argv."""
    global _begun, _taken
    if _begun is None or _begun.argv != argv:
        return None
    _taken, _begun = _begun, None
    return _taken.outcome()


def answered(port: int, token: str) -> bool:
    """Whether the server answered the taken forward's one GET with this token (a 200 through
    that very forward), as localnet.probe would have asked next."""
    global _taken
    taken, _taken = _taken, None
    return taken is not None and (taken.port, taken.token) == (port, token) and taken.answer()


def settle() -> None:
    """Cancel a begun forward that `up` did not take: its decision was another."""
    global _begun, _taken
    begun, _begun, _taken = _begun, None, None
    if begun is None or begun.outcome().returncode != 0:
        return
    begun.answer()  # its GET finished before the forward goes
    argv = begun.argv
    at = argv.index("-O") + 1  # ssh -O forward -L SPEC: the same with -O cancel
    cancel = [*argv[:at], "cancel", *argv[at + 1 :]]
    log.debug("run %s", " ".join(cancel))
    subprocess.run(cancel, stdin=subprocess.DEVNULL, capture_output=True, text=True)


class _Begun:
    """The forward's ssh, waited for in a thread that then sends the session's server one GET
    with its token through it: the ssh and the GET's two round trips overlap the import."""

    def __init__(self, argv: list[str], process: subprocess.Popen[str], port: object, token: object):
        self.argv = argv
        self.port, self.token = port, token
        self._done: subprocess.CompletedProcess[str] | None = None
        self._answered = False
        self._forwarded = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(process,), daemon=True)
        self._thread.start()

    def _run(self, process: subprocess.Popen[str]) -> None:
        out, err = process.communicate()
        self._done = subprocess.CompletedProcess(self.argv, process.returncode, out, err)
        self._forwarded.set()
        # Only once the forward is up: its success proves the port is this master's, so the
        # token goes to that server and nowhere else (as session._reattach_fast).
        if process.returncode == 0 and isinstance(self.port, int) and isinstance(self.token, str):
            self._answered = localnet.status_of("127.0.0.1", self.port, self.token, ANSWER_TIMEOUT) == 200

    def outcome(self) -> subprocess.CompletedProcess[str]:
        self._forwarded.wait()
        assert self._done is not None
        return self._done

    def answer(self) -> bool:
        self._thread.join()
        return self._answered
