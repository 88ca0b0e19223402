"""Where a session's Jupyter runs: the one part of a session that differs between kinds.

A session (session.py) is a Jupyter server that nbremote started, finds again
and reaches through a forward; the laptop remembers it (sessions.py) and the
keeper (keeper.py) keeps its forward up. How the server is started, stopped,
listed and found gone is a Runner: on the host itself (onhost.py: tmux, else
setsid) or in a batch job on a compute node behind a login node (slurm.py).
Another scheduler is one more Runner; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from nbremote import profiles, sessions
from nbremote.console import Console
from nbremote.errors import NbremoteError
from nbremote.remote import Host, Place
from nbremote.sessions import SessionRecord

SLURM = "slurm"  # the name of the Slurm runner (slurm.py), in session records


def uses_slurm(host: str | None, slurm_text: str | None) -> bool:
    """Slurm when the command asks for it, the profile names it, or a Slurm session there is remembered."""
    if slurm_text is not None:
        return True
    if not host:
        return False
    profile = profiles.find(host)
    if profile is not None and profile.scheduler == SLURM:
        return True
    return any(r.runner == SLURM for r in sessions.for_host(host))


@dataclass(frozen=True)
class StartRequest:
    dir: str
    mode: str
    env: str | None
    timeout: float  # seconds for the agent's hello
    start_timeout: float  # seconds for Jupyter to answer once it runs
    socket: bool  # a Unix socket in a private dir instead of a loopback port (host runner only)
    keep_output: bool = False  # cells run by the server, output kept with no browser (host runner only)


@dataclass(frozen=True)
class Served:
    """A Jupyter as its runner reports it: what the forward, the URL and the laptop's record need."""

    dir: str
    mode: str
    port: int | str  # the port (or Unix socket) to forward to
    token: str
    pid: int  # 0 where the runner knows no process id (a batch job)
    reused: bool
    addr: str = "127.0.0.1"  # where the forward goes, seen from the place: its loopback, or a compute node
    hop: str | None = None  # a compute node the laptop logs in to, through the place: addr is seen from there
    job_id: str | None = None
    node: str | None = None
    where: str = ""  # where Jupyter runs, for messages: the host's label or the compute node
    fields: dict[str, object] = field(default_factory=dict)  # the runner's own --json fields
    warnings: tuple[str, ...] = ()  # shown once the URL is ready


TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    # Protocols are for mypy alone: `up`'s start-up (entry.py's reattach) has no use for typing.
    from typing import Protocol

    class Progress(Protocol):
        """What a runner tells the session while its agent call runs."""

        def contact(self) -> None:
            """The agent answered: the login is done."""

        def forward_to(self, port: int | str, addr: str) -> None:
            """Jupyter's port is known before it answers: the forward can go up now."""

        def poll_with(self, token: str) -> None:
            """Jupyter's token is known before it answers: a poll through the forward can start now,
            so its first answer proves the URL."""

    class Runner(Protocol):
        name: str  # remembered in each session record ("host", "slurm")
        # Whether a remembered session can be reattached from the laptop's record alone (a forward
        # and one probe): a runner whose result shows what only the server knows asks the agent.
        reattach_from_record: bool

        def start(
            self, place: Place, request: StartRequest, console: Console, progress: Progress, began: float
        ) -> Served:
            """Start Jupyter, or find the one running for request.dir; report through console."""

        def stop(
            self, place: Place, directory: str, all_dirs: bool, console: Console, timeout: float
        ) -> list[dict[str, object]]:
            """Stop the server(s); each item names the server's "dir"."""

        def listing(
            self, place: Place, records: dict[str, SessionRecord], show_token: bool, timeout: float
        ) -> list[tuple[dict[str, object], SessionRecord | None]]:
            """The servers there, each with the laptop's record of it (by its remote dir), if any."""

        def ended(self, place: Place, record: SessionRecord) -> NbremoteError | None:
            """Why the session's Jupyter is gone for good, when the runner can tell; else None."""

        def serving(self, record: SessionRecord) -> str:
            """What the status line of a held session names besides its URL ("" for nothing)."""

        def route(self, place: Place, served: Served) -> str:
            """Where the forward leads, after `localhost:PORT → `."""

        def left_running(self, record: SessionRecord, label: str, stop: str) -> str:
            """What keeps running when the foreground `up` ends, and the command `stop` that ends it."""

        def release(self, place: Host) -> None:
            """Let the connection go once `down` left no session using it."""
