"""More ports beside Jupyter: TensorBoard, a Dask dashboard, an API started later.

`nbremote forward HOST 6006` adds `ssh -O forward -L 127.0.0.1:6006:127.0.0.1:6006`
to the session's live master, after the agent confirmed that one of the user's
own programs listens on that port of the server's loopback (a port nothing
listens on, or another user's, is refused rather than forwarded in vain). The
forward is remembered in the session's record, so the keeper puts it back on
the same local port after a network drop, `up` puts it back, and `forward
--remove` or `down` take it away.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from nbremote import sessions
from nbremote.servertext import clean_text
from nbremote.errors import ExitCode, NbremoteError
from nbremote.localnet import any_free_port, port_free
from nbremote.remote import Host, Place
from nbremote.sessions import SessionRecord

_SPEC = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?\Z")


@dataclass(frozen=True)
class Forward:
    host: str
    local_port: int
    remote_port: int
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "url": f"http://127.0.0.1:{self.local_port}/",
            "seconds": round(self.seconds, 3),
        }


def parse_spec(text: str) -> tuple[int, int | None]:
    """REMOTE_PORT[:LOCAL_PORT] -> (remote, local or None)."""
    match = _SPEC.match(text)
    ports = [int(p) for p in match.groups() if p is not None] if match else []
    if not ports or not all(0 < p < 65536 for p in ports):
        raise NbremoteError(
            f"'{text}' is not REMOTE_PORT or REMOTE_PORT:LOCAL_PORT",
            hint="ports are numbers from 1 to 65535, e.g. 6006 or 6006:16006",
            exit_code=ExitCode.USAGE,
        )
    return ports[0], ports[1] if len(ports) == 2 else None


def session_for(host: str, directory: str) -> SessionRecord:
    record = sessions.find(host, directory)
    if record is None or record.runner != "host":
        raise NbremoteError(
            f"no nbremote session on {host} for {directory}",
            hint=f"`nbremote up {host}` first (forwards go with a session; `--dir` picks which)",
            exit_code=ExitCode.USAGE,
        )
    return record


def _check_local(record: SessionRecord, local: int) -> None:
    taken = {record.local_port, *(mine for mine, _ in record.forwards)}
    if local in taken or not port_free(local):
        raise NbremoteError(
            f"local port {local} is busy",
            hint="give another: `nbremote forward HOST REMOTE_PORT:LOCAL_PORT`",
            exit_code=ExitCode.PORT_BUSY,
        )


def add(place: Place, record: SessionRecord, remote: int, local: int | None, *, timeout: float) -> Forward:
    """Forward local -> remote through the session's master and remember it; nothing changes on error."""
    assert isinstance(place, Host), "forwards are to a host"
    began = time.monotonic()
    for mine, theirs in record.forwards:
        if theirs == remote and local in (None, mine):
            return _open(place, record, mine, theirs, began)  # asked again: make sure it is up
    if local is None:
        local = remote if port_free(remote) and remote != record.local_port else _free_near(record)
    _check_local(record, local)
    place.agent(hello_timeout=timeout + 10).request("port_check", {"port": remote}, timeout=timeout + 30)
    forward = _open(place, record, local, remote, began)
    sessions.save(replace(record, forwards=(*record.forwards, (local, remote))))
    return forward


def _free_near(record: SessionRecord) -> int:
    taken = {record.local_port, *(mine for mine, _ in record.forwards)}
    while (port := any_free_port()) in taken:
        pass
    return port


def _open(place: Host, record: SessionRecord, local: int, remote: int, began: float) -> Forward:
    if not place.connection.master_alive():
        place.connection.open_master()
    place.connection.forward(local, remote)
    return Forward(record.host, local, remote, time.monotonic() - began)


def remove(place: Place, record: SessionRecord, remote: int, local: int | None) -> Forward:
    gone = [(mine, theirs) for mine, theirs in record.forwards if theirs == remote and local in (None, mine)]
    if not gone:
        raise NbremoteError(
            f"no forward to port {remote} in the session on {record.host}",
            hint=f"`nbremote ls {record.host}` shows the forwards",
            exit_code=ExitCode.USAGE,
        )
    if isinstance(place, Host) and place.connection.master_alive():
        for mine, theirs in gone:
            place.connection.cancel(mine, theirs)
    sessions.save(replace(record, forwards=tuple(f for f in record.forwards if f not in gone)))
    return Forward(record.host, gone[0][0], remote)


def listening(place: Place, record: SessionRecord | None, *, timeout: float) -> list[dict[str, Any]]:
    """The user's own listeners on the server's loopback, and the local port of each one forwarded."""
    reply = place.agent(hello_timeout=timeout + 10).request("listening", {}, timeout=timeout + 30)
    rows = reply.get("listening")
    if not isinstance(rows, list):
        raise NbremoteError(f"the agent on {place.label} sent an invalid listening", exit_code=ExitCode.AGENT_FAILED)
    forwarded = {}
    if record is not None:
        forwarded = {theirs: mine for mine, theirs in record.forwards}
        if isinstance(record.remote_port, int):
            forwarded[record.remote_port] = record.local_port
    out: list[dict[str, Any]] = []
    for row in rows:
        port = row.get("port") if isinstance(row, dict) else None
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            continue
        pid = row.get("pid")
        command = row.get("command")
        out.append(
            {
                "port": port,
                "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                "command": clean_text(command, 200) if isinstance(command, str) else "",
                "local_port": forwarded.get(port),
            }
        )
    return out
