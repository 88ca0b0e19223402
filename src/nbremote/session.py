"""up / down / ls: the agent, the forward and the laptop's records, together.

Core functions take keyword-only options, report through a Console and return
plain results; they never print a result themselves and never exit.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from nbremote import keeper, sessions
from nbremote.agentlink import clean_text, is_server_path
from nbremote.localnet import choose_local_port, probe
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.remote import Host, Place, ProfileHost, ThisMachine, place_for
from nbremote.sessions import SessionRecord

log = logging.getLogger(__name__)

MODES = ("lab", "notebook")
URL_PATH = {"lab": "/lab", "notebook": "/tree"}
_TOKEN = re.compile(r"^[A-Za-z0-9]{16,128}$")


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


@dataclass(frozen=True)
class ServerInfo:
    """A server as the agent describes it, checked before anything uses it."""

    dir: str
    mode: str
    port: int | str  # the loopback port, or the path of its Unix socket (up --socket)
    pid: int
    token: str
    launcher: str
    started: float
    kernels: int | None = None
    busy: int | None = None
    last_activity: str | None = None


@dataclass(frozen=True)
class UpResult:
    host: str | None
    url: str
    local_port: int
    server: ServerInfo
    reused: bool
    replaced_pid: int | None
    created_master: bool
    seconds: float

    def to_json(self) -> dict:
        return {
            "host": self.host, "url": self.url, "local_port": self.local_port,
            "remote_port": self.server.port if isinstance(self.server.port, int) else None,
            "remote_socket": self.server.port if isinstance(self.server.port, str) else None,
            "pid": self.server.pid, "dir": self.server.dir,
            "mode": self.server.mode, "launcher": self.server.launcher, "reused": self.reused,
            "replaced_pid": self.replaced_pid, "seconds": round(self.seconds, 3),
        }


def validate_text(value: str, what: str) -> str:
    """Paths and names go to the server as data, but control characters never do."""
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise NbremoteError(f"{what} {value!r} is not valid: it is empty or has control characters",
                            exit_code=ExitCode.USAGE)
    return value


def _int(doc: dict, name: str, low: int, high: int, where: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NbremoteError(f"the agent on {where} sent an invalid {name}: {value!r}",
                            exit_code=ExitCode.AGENT_FAILED)
    return value


# tmux, setsid today; a launcher name is shown, never run.
LAUNCHER = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)?")
MAX_SERVERS = 1000


_UNSHOWN = object()


def _invalid(where: str, what: str, value: object = _UNSHOWN) -> NbremoteError:
    # Never validate_text here: that would blame the user (USAGE) for the server's answer.
    shown = "" if value is _UNSHOWN else f": {clean_text(repr(value), 80)}"
    return NbremoteError(f"the agent on {where} sent an invalid {what}{shown}", exit_code=ExitCode.AGENT_FAILED)


def parse_server(doc: object, where: str) -> ServerInfo:
    """Every field the laptop uses, checked: the URL, the forward and the screen depend on them."""
    if not isinstance(doc, dict):
        raise NbremoteError(f"the agent on {where} sent no server", exit_code=ExitCode.AGENT_FAILED)
    token, directory, mode = doc.get("token"), doc.get("dir"), doc.get("mode")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):  # match() would allow a final \n
        raise _invalid(where, "token")
    if mode not in MODES:
        raise _invalid(where, "server mode", mode)
    if not is_server_path(directory):
        raise _invalid(where, "directory", directory)
    launcher, started, activity = doc.get("launcher"), doc.get("started"), doc.get("last_activity")
    if not isinstance(launcher, str) or not LAUNCHER.fullmatch(launcher):
        raise _invalid(where, "launcher", launcher)
    # What is only shown is dropped when it is not what it should be; it never gets through unchecked.
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not 0 <= started < 2**40:
        started = 0.0
    if not isinstance(activity, str) or not _ISO_TIME.fullmatch(activity):
        activity = None
    optional = {k: doc.get(k) if _counts(doc.get(k)) else None for k in ("kernels", "busy")}
    sock = doc.get("sock")
    if sock is not None and (not is_server_path(sock) or doc.get("port") is not None):
        raise _invalid(where, "socket", sock)
    return ServerInfo(
        dir=directory, mode=mode, port=sock if sock is not None else _int(doc, "port", 1, 65535, where),
        pid=_int(doc, "pid", 1, 2**31, where), token=token,
        launcher=launcher, started=float(started), last_activity=activity, **optional,
    )


def _counts(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100_000


def parse_stopped(doc: object, where: str) -> dict:
    if not isinstance(doc, dict) or not is_server_path(doc.get("dir")):
        raise _invalid(where, "stopped server")
    return {"dir": doc["dir"], "pid": _int(doc, "pid", 1, 2**31, where)}


def url_for(port: int, mode: str, token: str) -> str:
    return f"http://127.0.0.1:{port}{URL_PATH[mode]}?token={token}"


def masked(token: str) -> str:
    """Enough of a token to tell two apart, not enough to use one."""
    return token[:4] + "…"


class _Forwarder:
    """Puts the forward up as soon as the agent names the port, and takes it down on failure."""

    def __init__(self, place: Place, local_port: int):
        self.place = place
        self.local_port = local_port
        self.remote_port: int | str | None = None

    def to(self, remote_port: int | str) -> None:
        if self.remote_port == remote_port:
            return
        self.undo()
        if isinstance(self.place, Host):
            self.place.connection.forward(self.local_port, remote_port)
        self.remote_port = remote_port

    def undo(self) -> None:
        if self.remote_port is not None and isinstance(self.place, Host):
            self.place.connection.cancel(self.local_port, self.remote_port)
        self.remote_port = None


def _reattach_fast(place: Host, previous: SessionRecord, opts: UpOptions, console: Console,
                   started: float) -> UpResult | None:
    """With a live master and a remembered server: re-forward and check, no agent round trip."""
    conn = place.connection
    # The master accepts a forward it holds already and refuses a port another process holds,
    # so success proves the port is ours to send the token to.
    try:
        conn.forward(previous.local_port, previous.remote_port)
    except NbremoteError:
        return None
    if not probe(previous.local_port, previous.token, time.monotonic() + opts.timeout):
        conn.cancel(previous.local_port, previous.remote_port)
        return None
    return _resumed(place, previous, opts, console, started, created_master=False)


def _resumed(place: Host, previous: SessionRecord, opts: UpOptions, console: Console, started: float, *,
             created_master: bool) -> UpResult:
    """The remembered server answered to its token through the forward: it is that very Jupyter."""
    server = ServerInfo(dir=previous.remote_dir, mode=previous.mode, port=previous.remote_port,
                        pid=previous.pid, token=previous.token, launcher="", started=0.0)
    console.done(f"Jupyter already running in {server.dir} on {place.label} (pid {server.pid})",
                 time.monotonic() - started)
    return _finish(place, opts, previous.local_port, server, reused=True, replaced=None,
                   created_master=created_master, started=started)


def _finish(place: Place, opts: UpOptions, local_port: int, server: ServerInfo, *, reused: bool,
            replaced: int | None, created_master: bool, started: float) -> UpResult:
    mode = opts.mode if opts.mode in MODES else server.mode
    sessions.save(SessionRecord(host=place.host, dir=opts.dir, remote_dir=server.dir, local_port=local_port,
                                remote_port=server.port, token=server.token, pid=server.pid, mode=mode,
                                updated=time.time()))
    return UpResult(host=opts.host, url=url_for(local_port, mode, server.token), local_port=local_port,
                    server=server, reused=reused, replaced_pid=replaced, created_master=created_master,
                    seconds=time.monotonic() - started)


def up(opts: UpOptions, console: Console, *, interactive: bool = False) -> UpResult:
    started = time.monotonic()
    validate_text(opts.dir, "directory")
    if opts.env is not None:
        validate_text(opts.env, "environment")
    if opts.socket and not opts.host:
        raise NbremoteError("--socket needs a HOST: a browser reaches a Unix socket only through the ssh forward",
                            hint="leave --socket out to serve this machine on a loopback port",
                            exit_code=ExitCode.USAGE)
    place = place_for(opts.host, timeout=opts.timeout, interactive=interactive, persist=True)
    previous = sessions.find(place.host, opts.dir)
    had_master = isinstance(place, Host) and place.connection.master_alive()
    # --socket asks the agent: a remembered server on a port would need a conflict check.
    wanted = previous and (not opts.socket or isinstance(previous.remote_port, str))
    if had_master and wanted and opts.port in (None, previous.local_port) and opts.env is None:
        result = _reattach_fast(place, previous, opts, console, started)
        if result is not None:
            return result
    if isinstance(place, ThisMachine):
        local_port = 0  # the server's own port is the one to open
    else:
        local_port = choose_local_port(opts.port, previous.local_port if previous else None)
    forwarder = _Forwarder(place, local_port)
    phase = {"connected": had_master or isinstance(place, ThisMachine)}
    # With --env the agent must see the request: a server from another environment is a conflict.
    remembered = previous if wanted and local_port == previous.local_port and opts.env is None else None

    def on_event(name: str, data: dict) -> None:
        if name == "starting":
            if not phase["connected"]:
                console.done(f"connected to {place.label}", time.monotonic() - started)
                phase["connected"] = True
            port = data.get("port") if data.get("sock") is None else data.get("sock")
            valid = is_server_path(port) or (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536)
            if valid and local_port:
                # Forward while Jupyter is still starting: the tunnel is ready when it is.
                forwarder.to(port)
        elif name == "stale":
            pid = data.get("pid")
            shown = f" (pid {pid})" if isinstance(pid, int) and not isinstance(pid, bool) else ""
            console.warn(f"the Jupyter nbremote started earlier{shown} had stopped; starting a fresh one")

    try:
        if isinstance(place, Host) and not had_master and (remembered or isinstance(place, ProfileHost)):
            began = time.monotonic()
            reached = place.connect()
            login = time.monotonic() - began
            via = f" via {reached.describe()}" if reached is not None else ""
            console.done(f"connected to {place.label}{via}", time.monotonic() - started)
            phase["connected"] = True
            if remembered is not None:
                # The laptop remembers this session: put its forward back and ask the server
                # there with its token. A dead one costs at most about one login's time more.
                forwarder.to(remembered.remote_port)
                if probe(local_port, remembered.token, time.monotonic() + max(0.3, login)):
                    return _resumed(place, remembered, opts, console, started, created_master=True)
        with console.progress(f"starting Jupyter on {place.label}"):
            reply = place.agent(hello_timeout=opts.timeout + 10).request(
                "up", {"dir": opts.dir, "mode": opts.mode, "env": opts.env, "timeout": opts.start_timeout,
                       "socket": opts.socket},
                on_event=on_event, timeout=opts.start_timeout + 30)
        server = parse_server(reply.get("server"), place.label)
        reused = reply.get("reused") is True
        if not phase["connected"]:
            console.done(f"connected to {place.label}", time.monotonic() - started)
        what = "JupyterLab" if server.mode == "lab" else "Jupyter Notebook"
        if reused:
            console.done(f"{what} already running in {server.dir} (pid {server.pid})", time.monotonic() - started)
        else:
            console.done(f"{what} started in {server.dir} (pid {server.pid}, {server.launcher})",
                         time.monotonic() - started)
        if local_port:
            forwarder.to(server.port)
        port = local_port or server.port
        if not probe(port, server.token, time.monotonic() + opts.timeout):
            raise NbremoteError(f"Jupyter on {place.label} does not answer through localhost:{port}",
                                hint="run with --verbose to see each step", exit_code=ExitCode.ERROR)
    except BaseException:
        forwarder.undo()
        if isinstance(place, Host) and not had_master:
            place.connection.close()
        raise
    if local_port:
        console.done(f"localhost:{local_port} → {place.label}:{server.port}", time.monotonic() - started)
    replaced = reply.get("replaced_pid")
    replaced = replaced if isinstance(replaced, int) and not isinstance(replaced, bool) else None
    return _finish(place, opts, port, server, reused=reused, replaced=replaced,
                   created_master=isinstance(place, Host) and not had_master, started=started)


def down(*, host: str | None, directory: str, all_dirs: bool, timeout: float, console: Console,
         interactive: bool = False) -> list[dict]:
    validate_text(directory, "directory")
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    mine = [r for r in sessions.for_host(place.host) if all_dirs or r.dir == directory]
    with console.progress(f"stopping Jupyter on {place.label}"):
        reply = place.agent(hello_timeout=timeout + 10).request("down", {"dir": directory, "all": all_dirs},
                                                                timeout=60)
    items = reply.get("stopped")
    if not isinstance(items, list) or len(items) > MAX_SERVERS:
        raise _invalid(place.label, "list of stopped servers")
    stopped = [parse_stopped(doc, place.label) for doc in items]
    stopped_dirs = {s.get("dir") for s in stopped}
    mine += [r for r in sessions.for_host(place.host) if r.remote_dir in stopped_dirs and r not in mine]
    if isinstance(place, Host):
        for record in mine:
            keeper.stop(record.host, record.dir)  # or it would put the forward back
            place.connection.cancel(record.local_port, record.remote_port)
    sessions.remove(mine)
    if isinstance(place, Host) and not sessions.for_host(place.host):
        place.connection.close()
    return stopped


def ls(*, host: str | None, timeout: float, show_token: bool = False, interactive: bool = False) -> list[dict]:
    """The servers there; each URL's token is masked unless show_token."""
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    reply = place.agent(hello_timeout=timeout + 10).request("ls", {}, timeout=60)
    local = {r.remote_dir: r for r in sessions.for_host(place.host)}
    servers = []
    items = reply.get("servers")
    if not isinstance(items, list) or len(items) > MAX_SERVERS:
        raise _invalid(place.label, "list of servers")
    for doc in items:
        info = parse_server(doc, place.label)
        record = local.get(info.dir)
        local_port = info.port if isinstance(place, ThisMachine) else record.local_port if record else None
        servers.append({
            "dir": info.dir, "mode": info.mode, "pid": info.pid, "remote_port": info.port,
            "local_port": local_port,
            "url": None if local_port is None else
            url_for(local_port, info.mode, info.token if show_token else masked(info.token)),
            "started": info.started, "running": doc.get("running") is True, "kernels": info.kernels,
            "busy": info.busy, "last_activity": info.last_activity, "launcher": info.launcher,
            "keeper_pid": keeper.keeper_pid(record.host, record.dir) if record else None,
        })
    return servers
