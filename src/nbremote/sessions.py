"""The laptop's memory of its sessions: which local port forwards to what.

One JSON file, 0600 in the private state dir (it holds tokens, so a later
`up` can reattach in a couple of round trips without asking the agent). A
session in a Slurm job is a record like any other: its runner is "slurm", and
its forward goes through the login node to the compute node's address, or,
with `hop`, through the laptop's ssh to the node to the node's loopback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from pathlib import Path

from nbremote import early, paths


@dataclass(frozen=True)
class SessionRecord:
    host: str  # the host as the user typed it ("" for this machine)
    dir: str  # --dir as typed, the lookup key
    remote_dir: str  # resolved on the server
    local_port: int
    remote_port: int | str  # or the path of Jupyter's Unix socket on the server (up --socket)
    token: str
    pid: int
    mode: str
    updated: float
    runner: str = "host"  # where Jupyter runs: "host" (tmux/setsid there) or "slurm" (a batch job)
    addr: str = "127.0.0.1"  # where the forward goes, seen from the host: its loopback, or a compute node
    job_id: str | None = None  # the batch job holding Jupyter, for a scheduler's runner
    node: str | None = None  # the compute node it runs on
    hop: str | None = None  # the node's address, when the forward goes through the laptop's ssh to it
    # More ports of the host's loopback forwarded beside Jupyter (`nbremote forward`), as
    # (local port, remote port); the keeper puts them back with Jupyter's.
    forwards: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        # JSON brings lists back; a pair that is not two ports is a record another version wrote.
        pairs = tuple(tuple(pair) for pair in self.forwards)
        if not all(
            len(p) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < 65536 for n in p)
            for p in pairs
        ):
            raise TypeError("forwards must be pairs of ports")
        object.__setattr__(self, "forwards", pairs)

    @property
    def key(self) -> str:
        return f"{self.host}\0{self.dir}"


NAME = "sessions.json"


def load_all() -> dict[str, SessionRecord]:
    # A read must not create the state dir: a command refused at the edge leaves nothing behind.
    return paths.read_records(paths.state_file(NAME), SessionRecord)


def _save_all(records: dict[str, SessionRecord]) -> None:
    doc = {key: asdict(record) for key, record in records.items()}
    paths.write_private(paths.state_dir() / NAME, json.dumps(doc, indent=1, sort_keys=True))


def find(host: str, directory: str) -> SessionRecord | None:
    return load_all().get(f"{host}\0{directory}")


def for_host(host: str) -> list[SessionRecord]:
    return [r for r in load_all().values() if r.host == host]


def save(record: SessionRecord) -> None:
    records = load_all()
    records[record.key] = record
    _save_all(records)


def fields_of(record: SessionRecord, *names: str) -> tuple[Path, str, dict[str, object]]:
    """The records' file, the record's key there and these fields as the file holds them."""
    saved = asdict(record)
    return paths.state_file(NAME), record.key, {name: saved[name] for name in names}


def remove(records: list[SessionRecord]) -> None:
    current = load_all()
    for record in records:
        current.pop(record.key, None)
    _save_all(current)


def keeper_pid_file(host: str, directory: str) -> Path:
    """Where the background keeper of a session (`up --detach`) writes its pid, under its lock."""
    name = hashlib.sha256(f"{host}\0{directory}".encode()).hexdigest()[:16]
    folder = paths.state_dir() / "keepers"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"{name}.pid"


def keeper_pid(host: str, directory: str) -> int | None:
    """The live keeper of a session, checked by its lock rather than trusted from the file."""
    return early.held_pid(keeper_pid_file(host, directory))


def keeper_running(host: str) -> bool:
    """Whether a background keeper of any of the host's sessions is alive."""
    return any(keeper_pid(host, r.dir) is not None for r in for_host(host))
