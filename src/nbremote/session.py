"""up / down / ls: one session model, whichever runner holds the Jupyter.

A session is a Jupyter server that nbremote started, finds again and reaches
through a forward on a local port; the laptop remembers it (sessions.py) and
the keeper (keeper.py) keeps the forward up. Where the server runs is the
runner's business (runner.py): on the host, or in a Slurm job behind a login
node; everything here is the same for both. The place (HOST resolved) comes in
from the command line, resolved once.

Core functions take keyword-only options, report through a Console and return
plain results; they never print a result themselves and never exit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from nbremote import early, logs, nodelogin, profiles, sessions
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.localnet import Poller, choose_local_port, port_free, probe
from nbremote.remote import Host, Place, ThisMachine
from nbremote.runner import Served, StartRequest
from nbremote.servers import MODES, url_for, validate_text
from nbremote.sessions import SessionRecord

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.runner import Runner

log = logs.get(__name__)


# How long `up` with a live master waits for a remembered server to answer through it.
LIVE_ANSWER_WAIT = 2.0


@dataclass(frozen=True)
class UpOptions:
    host: str | None
    dir: str = "~"
    mode: str = "lab"
    env: str | None = None
    port: int | None = None
    timeout: float = 10.0
    start_timeout: float = 90.0
    socket: bool = False  # Jupyter on a Unix socket in a 0700 dir, not a loopback port
    keep_output: bool = False  # cells run by the server, output kept while no browser is attached


def options_for(
    host: str | None,
    *,
    directory: str | None,
    lab: bool | None,
    env: str | None,
    port: int | None,
    timeout: float,
    socket: bool,
    keep_output: bool | None,
) -> UpOptions:
    """`up`'s options as given, the host profile's for those left out: the CLI's `up` and the
    console script's reattach before the CLI is imported (entry.py) take them from here alike."""
    defaults = profiles.up_defaults(host)
    return UpOptions(
        host=host,
        dir=directory if directory is not None else defaults.dir or "~",
        mode=(defaults.mode or "lab") if lab is None else ("lab" if lab else "notebook"),
        env=env or defaults.env,
        port=port or defaults.port,
        timeout=timeout,
        socket=socket,
        keep_output=bool(defaults.keep_output if keep_output is None else keep_output),
    )


@dataclass(frozen=True)
class UpResult:
    host: str | None
    url: str
    local_port: int
    served: Served
    record: SessionRecord  # what the laptop now remembers, and the keeper keeps
    created_master: bool
    seconds: float
    shown: bool = False  # the URL (or the --json result) is printed already: show_url did

    @property
    def reused(self) -> bool:
        return self.served.reused

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "url": self.url,
            "local_port": self.local_port,
            **self.served.fields,
            "seconds": round(self.seconds, 3),
        }


class _Forwarder:
    """Puts the forward up as soon as Jupyter's port is known, and takes it down on failure."""

    def __init__(self, place: Place, local_port: int):
        self.place = place
        self.local_port = local_port
        self.remote: tuple[int | str, str, str | None] | None = None

    def to(self, remote_port: int | str, addr: str, hop: str | None = None) -> None:
        if self.remote == (remote_port, addr, hop):
            return
        self.undo()
        if isinstance(self.place, Host):
            nodelogin.link(self.place, hop).forward(self.local_port, remote_port, addr)
        self.remote = (remote_port, addr, hop)

    def undo(self) -> None:
        if self.remote is not None and isinstance(self.place, Host):
            port, addr, hop = self.remote
            nodelogin.link(self.place, hop).cancel(self.local_port, port, addr)
        self.remote = None


class _Progress:
    """What the runner reports while it starts Jupyter: the login done, the port known."""

    def __init__(self, place: Place, console: Console, forwarder: _Forwarder, began: float, connected: bool):
        self.place, self.console, self.forwarder, self.began = place, console, forwarder, began
        self.connected = connected
        self.poller: Poller | None = None

    def contact(self) -> None:
        if not self.connected:
            via = self.place.via() if isinstance(self.place, Host) else ""
            self.console.done(f"connected to {self.place.label}{via}", time.monotonic() - self.began)
            self.connected = True

    def forward_to(self, port: int | str, addr: str) -> None:
        if self.forwarder.local_port:
            self.forwarder.to(port, addr)

    def poll_with(self, token: str) -> None:
        if self.forwarder.remote is not None and self.poller is None:
            self.poller = Poller(self.forwarder.local_port, token)

    def proven(self, token: str, deadline: float) -> bool | None:
        """Whether the poll begun at poll_with answered with this token; None if none was begun."""
        if self.poller is None or self.poller.token != token:
            return None
        return self.poller.wait(deadline)

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()


def _from_record(record: SessionRecord, place: Place) -> Served:
    """A remembered server that answered to its token through the forward: that very Jupyter."""
    return Served(
        dir=record.remote_dir,
        mode=record.mode,
        port=record.remote_port,
        token=record.token,
        pid=record.pid,
        reused=True,
        addr=record.addr,
        hop=record.hop,
        job_id=record.job_id,
        node=record.node,
        where=place.label,
        fields={
            "remote_port": record.remote_port if isinstance(record.remote_port, int) else None,
            "remote_socket": record.remote_port if isinstance(record.remote_port, str) else None,
            "pid": record.pid,
            "dir": record.remote_dir,
            "mode": record.mode,
            "launcher": "",
            "reused": True,
            "replaced_pid": None,
        },
    )


def _reattach_fast(
    place: Host, previous: SessionRecord, opts: UpOptions, console: Console, runner: Runner, started: float
) -> UpResult | None:
    """With a live master and a remembered server: re-forward and check, no agent round trip.
    None when there is no live master, or the server does not answer to its token."""
    conn = place.connection
    # The master accepts a forward it holds already and refuses a port another process holds,
    # so success proves the port is ours to send the token to.
    try:
        conn.forward(previous.local_port, previous.remote_port, previous.addr)
    except NbremoteError:
        return None
    answered = early.answered(previous.local_port, previous.token)  # asked through a forward begun early
    # A live server answers within a few round trips of the master; one that is gone never
    # does, and the agent (which asks it on the server) is then the quicker way to a new one.
    wait = min(opts.timeout, LIVE_ANSWER_WAIT)
    if not answered and not probe(previous.local_port, previous.token, time.monotonic() + wait):
        conn.cancel(previous.local_port, previous.remote_port, previous.addr)
        return None
    return _resumed(place, previous, opts, console, runner, started, created_master=False)


def _resumed(
    place: Host,
    previous: SessionRecord,
    opts: UpOptions,
    console: Console,
    runner: Runner,
    started: float,
    *,
    created_master: bool,
) -> UpResult:
    served = _from_record(previous, place)
    console.done(
        f"Jupyter already running in {served.dir} on {place.label} (pid {served.pid})", time.monotonic() - started
    )
    return _finish(
        place, runner, opts, previous.local_port, served, console, created_master=created_master, started=started
    )


def _finish(
    place: Place,
    runner: Runner,
    opts: UpOptions,
    local_port: int,
    served: Served,
    console: Console,
    *,
    created_master: bool,
    started: float,
) -> UpResult:
    mode = opts.mode if opts.mode in MODES else served.mode
    previous = sessions.find(place.host, opts.dir)
    # The same server (same token): its extra forwards (`nbremote forward`) come back too.
    extra = previous.forwards if previous is not None and previous.token == served.token else ()
    if isinstance(place, Host):
        for local, remote in extra:
            try:
                place.connection.forward(local, remote)
            except NbremoteError:
                console.warn(f"localhost:{local} is busy: the forward to {place.label}:{remote} is not back")
    record = SessionRecord(
        host=place.host,
        dir=opts.dir,
        remote_dir=served.dir,
        local_port=local_port,
        remote_port=served.port,
        token=served.token,
        pid=served.pid,
        mode=mode,
        updated=time.time(),
        runner=runner.name,
        addr=served.addr,
        job_id=served.job_id,
        node=served.node,
        hop=served.hop,
        forwards=extra,
    )
    sessions.save(record)
    if early.words is not None and isinstance(place, Host) and served.hop is None and not _asks_agent(opts):
        # The next `up` with the console script's words may begin this forward before its
        # import (early.py).
        early.hint(
            place.connection.forward_argv(local_port, served.port, served.addr),
            place.connection.control_path,
            sessions.keeper_pid_file(place.host, opts.dir),
            sessions.fields_of(record, "token", "local_port", "remote_port", "addr"),
        )
    # Without a forward (this machine), the browser goes to Jupyter's own address.
    address = "127.0.0.1" if isinstance(place, Host) else served.addr
    return UpResult(
        host=opts.host,
        url=url_for(local_port, mode, served.token, address),
        local_port=local_port,
        served=served,
        record=record,
        created_master=created_master,
        seconds=time.monotonic() - started,
    )


def _local_port(place: Place, opts: UpOptions, previous: SessionRecord | None, had_master: bool) -> int:
    if isinstance(place, ThisMachine):
        return 0  # the server's own port is the one to open
    if (
        isinstance(place, Host)
        and had_master
        and previous is not None
        and opts.port in (None, previous.local_port)
        and not port_free(previous.local_port)
        and nodelogin.link(place, previous.hop).cancel(previous.local_port, previous.remote_port, previous.addr)
    ):
        # The port was held by this master's own forward to the old server: the same port
        # again keeps the browser's tabs, once the forward goes to the server found now.
        return previous.local_port
    return choose_local_port(opts.port, previous.local_port if previous else None)


def _remembered(place: Place, runner: Runner, opts: UpOptions) -> SessionRecord | None:
    """The laptop's record of this session, if `up` may put it back from the record alone."""
    previous = sessions.find(place.host, opts.dir)
    if previous is None or previous.runner != runner.name or not runner.reattach_from_record:
        return None
    # --socket asks the agent: a remembered server on a port would need a conflict check.
    return previous if not opts.socket or isinstance(previous.remote_port, str) else None


def _asks_agent(opts: UpOptions) -> bool:
    """With --env or --keep-output the agent must see the request: it may be a conflict."""
    return opts.env is not None or opts.keep_output


def reattach_live(place: Place, runner: Runner, opts: UpOptions, console: Console, started: float) -> UpResult | None:
    """`up` of a remembered session through a live master: its forward put back and its server
    asked with its token, no agent call. None, having changed nothing, unless that worked: `up`
    then goes the ordinary way. The console script runs this before the CLI is imported
    (reattach_early); `up` runs it when that did not."""
    validate_text(opts.dir, "directory")
    if not isinstance(place, Host) or place.began_login or _asks_agent(opts):
        return None
    previous = _remembered(place, runner, opts)
    if previous is None or opts.port not in (None, previous.local_port) or not place.connection.may_have_master():
        return None
    # No `-O check` first: the forward itself fails at once without a live master.
    return _reattach_fast(place, previous, opts, console, runner, started)


# Sessions reattached by the console script before the CLI was imported (entry.py), with the
# options they were reattached for: `up` with the same place and options takes its result.
_early: list[tuple[Place, UpOptions, UpResult]] = []


def reattach_early(place: Place, runner: Runner, opts: UpOptions, console: Console, *, as_json: bool) -> bool:
    """reattach_live, its URL shown at once (show_url), for the `up` the CLI runs next: a live
    session's URL does not wait for the CLI's import. Whether it was reattached."""
    result = reattach_live(place, runner, opts, console, time.monotonic())
    if result is None:
        return False
    show_url(result, console, as_json=as_json)
    _early.append((place, opts, replace(result, shown=True)))
    return True


def show_url(result: UpResult, console: Console, *, as_json: bool) -> None:
    """The URL on stdout, or with --json the result as one JSON document."""
    if as_json:
        console.emit_json(result.to_json())
    else:
        console.result(f"  {result.url}")


def up(place: Place, runner: Runner, opts: UpOptions, console: Console) -> UpResult:
    for i, (early_place, early_opts, taken) in enumerate(_early):
        if early_place is place and early_opts == opts:
            del _early[i]
            return taken
    started = time.monotonic()
    validate_text(opts.dir, "directory")
    if opts.env is not None:
        validate_text(opts.env, "environment")
    if opts.socket and isinstance(place, ThisMachine):
        raise NbremoteError(
            "--socket needs a HOST: a browser reaches a Unix socket only through the ssh forward",
            hint="leave --socket out to serve this machine on a loopback port",
            exit_code=ExitCode.USAGE,
        )
    result = reattach_live(place, runner, opts, console, started)
    if result is not None:
        return result
    previous = sessions.find(place.host, opts.dir)
    if previous is not None and previous.runner != runner.name:
        previous = None
    wanted = _remembered(place, runner, opts) is not None
    asks_agent = _asks_agent(opts)
    had_master = isinstance(place, Host) and place.master_before()
    local_port = _local_port(place, opts, previous, had_master)
    forwarder = _Forwarder(place, local_port)
    progress = _Progress(place, console, forwarder, started, connected=had_master or isinstance(place, ThisMachine))
    remembered = (
        previous if wanted and previous is not None and local_port == previous.local_port and not asks_agent else None
    )
    try:
        if isinstance(place, Host) and not had_master and remembered is not None:
            began = time.monotonic()
            place.connect(settle=False)
            login = time.monotonic() - began
            # The laptop remembers this session: put its forward back and ask the server
            # there with its token. A dead one costs at most about one login's time more.
            forwarder.to(remembered.remote_port, remembered.addr)
            if probe(local_port, remembered.token, time.monotonic() + max(0.3, login)):
                progress.contact()
                return _resumed(place, remembered, opts, console, runner, started, created_master=True)
        request = StartRequest(
            dir=opts.dir,
            mode=opts.mode,
            env=opts.env,
            timeout=opts.timeout,
            start_timeout=opts.start_timeout,
            socket=opts.socket,
            keep_output=opts.keep_output,
        )
        served = runner.start(place, request, console, progress, started)
        if local_port:
            forwarder.to(served.port, served.addr, served.hop)
        port = local_port or served.port
        assert isinstance(port, int), "a Unix socket is served only through a forward (refused above)"
        address = "127.0.0.1" if local_port else served.addr
        deadline = time.monotonic() + opts.timeout
        # The poll through the forward that began while Jupyter started is the proof, when
        # there is one: its answer comes about a round trip before a probe begun now would.
        proven = progress.proven(served.token, deadline) if local_port else None
        if not (proven if proven is not None else probe(port, served.token, deadline, host=address)):
            raise NbremoteError(
                f"Jupyter on {served.where} does not answer through localhost:{port}",
                hint="run with --verbose to see each step",
                exit_code=ExitCode.ERROR,
            )
    except BaseException:
        progress.stop()
        forwarder.undo()
        if isinstance(place, Host) and not had_master:
            place.connection.close()
        raise
    if local_port:
        console.done(f"localhost:{local_port} → {runner.route(place, served)}", time.monotonic() - started)
    for warning in served.warnings:
        console.warn(warning)
    return _finish(
        place,
        runner,
        opts,
        port,
        served,
        console,
        created_master=isinstance(place, Host) and not had_master,
        started=started,
    )


def down(
    place: Place, runner: Runner, *, directory: str, all_dirs: bool, timeout: float, console: Console
) -> list[dict[str, object]]:
    validate_text(directory, "directory")
    ours = [r for r in sessions.for_host(place.host) if r.runner == runner.name]
    mine = [r for r in ours if all_dirs or r.dir == directory]
    stopped = runner.stop(place, directory, all_dirs, console, timeout)
    stopped_dirs = {s.get("dir") for s in stopped}
    mine += [r for r in ours if r.remote_dir in stopped_dirs and r not in mine]
    if isinstance(place, Host):
        from nbremote import keeper  # `up`, reattached before the CLI is imported, has no use for it

        for record in mine:
            keeper.stop(record.host, record.dir)  # or it would put the forward back
            nodelogin.link(place, record.hop).cancel(record.local_port, record.remote_port, record.addr)
            for local, remote in record.forwards:
                place.connection.cancel(local, remote)
    sessions.remove(mine)
    if isinstance(place, Host):
        # A node master carries every session of jobs on that node: it goes with the last of them.
        left = {r.hop for r in sessions.for_host(place.host)}
        for hop in {r.hop for r in mine if r.hop is not None} - left:
            nodelogin.link(place, hop).close()
    if isinstance(place, Host) and not sessions.for_host(place.host):
        runner.release(place)
    return stopped


def ls(place: Place, runner: Runner, *, timeout: float, show_token: bool = False) -> list[dict[str, object]]:
    """The servers there; each URL's token is masked unless show_token."""
    records = {r.remote_dir: r for r in sessions.for_host(place.host) if r.runner == runner.name}
    servers = []
    for row, record in runner.listing(place, records, show_token, timeout):
        row["keeper_pid"] = sessions.keeper_pid(record.host, record.dir) if record else None
        row["forwards"] = (
            [{"local_port": local, "remote_port": remote} for local, remote in record.forwards] if record else []
        )
        servers.append(row)
    return servers
