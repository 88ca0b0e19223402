"""The phases of `up`, `down` and `ls` in session.py, through their seams: the place's connection
(a stand-in for the ssh master whose forward opens a real local port), the runner, and the real
probe over HTTP. No ssh, no agent, no root; each test well under a second."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from dataclasses import dataclass, field

import pytest

from nbremote import session, sessions
from nbremote.addresses import Address
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.localnet import any_free_port
from nbremote.reach import Reached
from nbremote.remote import Host, ProfileHost, ThisMachine
from nbremote.runner import Served
from nbremote.sessions import SessionRecord

TOKEN, OLD_TOKEN = "a" * 32, "b" * 32
REMOTE, NODE_ADDR = 38119, "10.0.0.7"
LAN = Reached(Address("192.168.1.112", 22), login_s=0.05, rtt_s=0.001)


class World:
    """The Jupyters on the far side, by (address seen from the host, port): their tokens."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, int | str], str] = {}


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        token = self.server.token()  # type: ignore[attr-defined]
        ok = token is not None and self.headers.get("Authorization") == f"token {token}"
        self.send_response(200 if ok else 403)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Connection:
    """The master as session.py uses it: a forward really listens on the local port and answers
    as the server at its far end does (nothing, while that server is not up)."""

    def __init__(self, world: World, alive: bool = False, reached: Reached | None = None):
        self.world, self.alive, self.reached = world, alive, reached
        self.forwards: dict[int, tuple[tuple[int | str, str], http.server.HTTPServer]] = {}
        self.calls: list[object] = []

    def may_have_master(self) -> bool:
        return self.alive

    def master_alive(self) -> bool:
        return self.alive

    def open_master(self, connect_timeout: float | None = None, *, settle: bool = True) -> Reached | None:
        self.calls.append("login")
        self.alive = True
        return self.reached

    def settled(self) -> Reached | None:
        return self.reached

    def forward(self, local_port: int, remote_port: int | str, remote_host: str = "127.0.0.1") -> None:
        self.calls.append(("forward", local_port, remote_port, remote_host))
        if local_port in self.forwards:
            if self.forwards[local_port][0] == (remote_port, remote_host):
                return  # ssh's master accepts a forward it holds already
            raise NbremoteError(f"local port {local_port} is busy", exit_code=ExitCode.PORT_BUSY)
        try:
            listener = http.server.HTTPServer(("127.0.0.1", local_port), _Answer)
        except OSError:
            raise NbremoteError(f"local port {local_port} is busy", exit_code=ExitCode.PORT_BUSY) from None
        listener.token = lambda: self.world.servers.get((remote_host, remote_port))  # type: ignore[attr-defined]
        threading.Thread(target=listener.serve_forever, args=(0.01,), daemon=True).start()
        self.forwards[local_port] = ((remote_port, remote_host), listener)

    def cancel(self, local_port: int, remote_port: int | str, remote_host: str = "127.0.0.1") -> bool:
        self.calls.append(("cancel", local_port, remote_port, remote_host))
        held = self.forwards.get(local_port)
        if held is None or held[0] != (remote_port, remote_host):
            return False
        del self.forwards[local_port]
        held[1].shutdown()
        held[1].server_close()
        return True

    def close(self) -> None:
        self.calls.append("close")
        for port, (target, _) in list(self.forwards.items()):
            self.cancel(port, *target)
        self.alive = False

    def stop(self) -> None:
        self.calls.append("stop")


@dataclass
class Runner:
    """A runner whose server comes up at `port` when started, reporting it early as a real one does."""

    world: World
    name: str = "host"
    reattach_from_record: bool = True
    addr: str = "127.0.0.1"
    port: int = REMOTE
    fail: NbremoteError | None = None
    answers: bool = True
    early_token: bool = False  # hands the token over with the port, as the host runner's agent does
    warnings: tuple[str, ...] = ()
    started: list[str] = field(default_factory=list)
    stopped: list[tuple[str, bool]] = field(default_factory=list)
    released: int = 0

    def start(self, place, request, console, progress, began) -> Served:
        self.started.append(request.dir)
        progress.contact()
        if self.fail is not None:
            raise self.fail
        # The forward goes up before Jupyter answers; the session's probe waits for it.
        progress.forward_to(self.port, self.addr)
        assert place.connection.forwards if isinstance(place, Host) else True
        if self.early_token:
            progress.poll_with(TOKEN)
        if self.answers:
            self.world.servers[(self.addr, self.port)] = TOKEN
        console.done("JupyterLab started")
        return Served(
            dir="/home/me/proj",
            mode="lab",
            port=self.port,
            token=TOKEN,
            pid=4242,
            reused=False,
            addr=self.addr,
            job_id="81" if self.name == "slurm" else None,
            node="node1" if self.name == "slurm" else None,
            where=place.label,
            fields={"pid": 4242, "reused": False},
            warnings=self.warnings,
        )

    def stop(self, place, directory, all_dirs, console, timeout):
        self.stopped.append((directory, all_dirs))
        return [{"dir": "/home/me/proj", "pid": 4242}]

    def listing(self, place, records, show_token, timeout):
        record = records.get("/home/me/proj")
        return [({"dir": "/home/me/proj", "local_port": record.local_port if record else None}, record)]

    def ended(self, place, record):
        return None

    def serving(self, record):
        return ""

    def route(self, place, served):
        return f"{place.label}:{served.port}"

    def left_running(self, record, label, stop):
        return ""

    def release(self, place):
        self.released += 1


def host(conn: Connection, cls: type[Host] = Host) -> Host:
    place = cls.__new__(cls)  # no ssh: only what session.py uses
    place.label = place.host = "gpubox"
    place.interactive = False
    place.connection = conn  # type: ignore[assignment]
    return place


def console() -> tuple[Console, io.StringIO]:
    err = io.StringIO()
    return Console(err=err, tty=False), err


def opts(**kw) -> session.UpOptions:
    return session.UpOptions(**{"host": "gpubox", "dir": "proj", "timeout": 0.3, **kw})


def remember(local_port: int, token: str = TOKEN, **kw) -> SessionRecord:
    record = SessionRecord(
        **{
            "host": "gpubox",
            "dir": "proj",
            "remote_dir": "/home/me/proj",
            "local_port": local_port,
            "remote_port": REMOTE,
            "token": token,
            "pid": 4242,
            "mode": "lab",
            "updated": 0.0,
            **kw,
        }
    )
    sessions.save(record)
    return record


@pytest.fixture
def world():
    return World()


@pytest.fixture(autouse=True)
def no_early_reattach(monkeypatch):
    """Each test starts with no session reattached before the CLI (session.reattach_early)."""
    monkeypatch.setattr(session, "_early", [])


@pytest.fixture
def cleanup():
    conns: list[Connection] = []
    yield conns
    for conn in conns:
        conn.close()


def test_cold_up_forwards_while_jupyter_starts_and_proves_the_url_through_it(world, cleanup):
    conn = Connection(world)
    cleanup.append(conn)
    runner = Runner(world)
    out, err = console()
    result = session.up(host(conn), runner, opts(), out)
    assert runner.started == ["proj"]
    assert conn.calls == [("forward", result.local_port, REMOTE, "127.0.0.1")]
    assert result.url == f"http://127.0.0.1:{result.local_port}/lab?token={TOKEN}"
    assert result.created_master and not result.reused
    assert err.getvalue().splitlines()[0].startswith("✓ connected to gpubox")
    assert f"✓ localhost:{result.local_port} → gpubox:{REMOTE}" in err.getvalue()
    assert sessions.find("gpubox", "proj") == result.record
    assert result.record.runner == "host" and result.record.remote_dir == "/home/me/proj"
    assert result.to_json()["pid"] == 4242 and "seconds" in result.to_json()


def test_the_poll_begun_with_the_early_token_proves_the_url_and_stops(world, cleanup, monkeypatch):
    conn = Connection(world)
    cleanup.append(conn)
    runner = Runner(world, early_token=True)
    probed: list[int] = []
    monkeypatch.setattr(session, "probe", lambda port, *a, **kw: probed.append(port) or False)
    out, _ = console()
    result = session.up(host(conn), runner, opts(timeout=5), out)
    assert probed == []  # no second request after the runner's reply
    assert result.url == f"http://127.0.0.1:{result.local_port}/lab?token={TOKEN}"


def test_an_early_token_that_never_answers_is_an_error_and_nothing_is_kept(world, cleanup):
    conn = Connection(world)
    cleanup.append(conn)
    runner = Runner(world, early_token=True, answers=False)
    out, _ = console()
    with pytest.raises(NbremoteError, match="does not answer through localhost"):
        session.up(host(conn), runner, opts(), out)
    assert conn.forwards == {} and sessions.find("gpubox", "proj") is None


@pytest.fixture
def live(world, cleanup):
    """A remembered server that answers its token, over a live master: (local port, connection)."""
    port = any_free_port()
    remember(port)
    world.servers[("127.0.0.1", REMOTE)] = TOKEN
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    return port, conn


def test_a_live_master_and_a_remembered_server_need_no_agent(world, live):
    port, conn = live
    runner = Runner(world)
    out, err = console()
    result = session.up(host(conn), runner, opts(), out)
    assert runner.started == []
    assert (result.local_port, result.reused, result.created_master) == (port, True, False)
    assert "✓ Jupyter already running in /home/me/proj on gpubox (pid 4242)" in err.getvalue()


def test_reattached_before_the_cli_the_url_is_shown_at_once_and_up_goes_on_from_there(world, live):
    """The console script's early path (entry.py): the same reattach, its URL printed before
    the CLI is imported; `up` with that place and those options then takes its result."""
    port, conn = live
    place, runner = host(conn), Runner(world)
    stdout, err = io.StringIO(), io.StringIO()
    assert session.reattach_early(place, runner, opts(), Console(out=stdout, err=err), as_json=False)
    url = f"http://127.0.0.1:{port}/lab?token={TOKEN}"
    assert stdout.getvalue() == f"  {url}\n"
    assert err.getvalue().startswith("✓ Jupyter already running in /home/me/proj on gpubox (pid 4242)  ")
    assert conn.calls == [("forward", port, REMOTE, "127.0.0.1")]
    later, later_err = console()
    result = session.up(place, runner, opts(), later)
    assert (result.url, result.shown, result.reused, result.created_master) == (url, True, True, False)
    assert later_err.getvalue() == "" and len(conn.calls) == 1 and runner.started == []
    assert sessions.find("gpubox", "proj") == result.record
    # Taken once: another `up` in the same process reattaches by itself.
    assert not session.up(place, runner, opts(), later).shown and len(conn.calls) == 2


def test_an_early_reattach_is_not_taken_for_other_options_or_another_place(world, live):
    port, conn = live
    place, runner = host(conn), Runner(world)
    assert session.reattach_early(place, runner, opts(), Console(out=io.StringIO(), err=io.StringIO()), as_json=False)
    out, _ = console()
    assert not session.up(place, runner, opts(mode="notebook"), out).shown
    assert not session.up(host(conn), runner, opts(), out).shown
    assert session.up(place, runner, opts(), out).shown


def test_an_early_reattach_with_json_prints_the_result_once(world, live):
    port, conn = live
    stdout, err = io.StringIO(), io.StringIO()
    place = host(conn)
    assert session.reattach_early(
        place, Runner(world), opts(), Console(out=stdout, err=err, json_mode=True), as_json=True
    )
    doc = json.loads(stdout.getvalue())
    assert (doc["local_port"], doc["reused"], doc["pid"]) == (port, True, 4242) and err.getvalue() == ""


@pytest.mark.parametrize(
    "why, record, alive, changes",
    [
        ("nothing remembered", None, True, {}),
        ("no master", {}, False, {}),
        ("another local port asked for", {}, True, {"port": 1}),
        ("--env: the agent must see it", {}, True, {"env": "torch"}),
        ("keep_output: the agent must see it", {}, True, {"keep_output": True}),
        ("a Slurm job's session", {"runner": "slurm"}, True, {}),
        ("a server that no longer answers to its token", {"token": OLD_TOKEN}, True, {}),
    ],
)
def test_no_early_reattach_when_it_is_not_a_sure_thing(world, cleanup, why, record, alive, changes):
    port = any_free_port()
    if record is not None:
        remember(port, **record)
    world.servers[("127.0.0.1", REMOTE)] = TOKEN
    conn = Connection(world, alive=alive)
    cleanup.append(conn)
    stdout, err = io.StringIO(), io.StringIO()
    before = sessions.load_all()
    assert not session.reattach_early(
        host(conn), Runner(world), opts(**changes), Console(out=stdout, err=err), as_json=False
    ), why
    assert stdout.getvalue() == err.getvalue() == "" and conn.forwards == {} and session._early == []
    assert sessions.load_all() == before


def test_a_remembered_server_that_is_gone_is_started_again_on_the_same_port(world, cleanup):
    port = any_free_port()
    remember(port, token=OLD_TOKEN)  # the old server's token no longer answers
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    runner = Runner(world)
    out, _ = console()
    result = session.up(host(conn), runner, opts(), out)
    assert runner.started == ["proj"]
    assert result.local_port == port and result.url.endswith(TOKEN)
    assert ("cancel", port, REMOTE, "127.0.0.1") in conn.calls


def test_with_a_live_master_a_gone_server_costs_a_short_wait_not_the_timeout(world, cleanup, monkeypatch):
    monkeypatch.setattr(session, "LIVE_ANSWER_WAIT", 0.2)
    port = any_free_port()
    remember(port)  # nothing answers at the forward's far end any more
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    runner = Runner(world)
    out, _ = console()
    began = time.monotonic()
    result = session.up(host(conn), runner, opts(timeout=30), out)
    assert runner.started == ["proj"] and result.local_port == port and result.url.endswith(TOKEN)
    assert time.monotonic() - began < 10  # the agent was asked after LIVE_ANSWER_WAIT, not --timeout's 30 s


def test_a_profile_logs_in_and_reattaches_by_the_remembered_forward(world, cleanup):
    port = any_free_port()
    remember(port)
    world.servers[("127.0.0.1", REMOTE)] = TOKEN
    conn = Connection(world, reached=LAN)
    cleanup.append(conn)
    runner = Runner(world)
    out, err = console()
    result = session.up(host(conn, ProfileHost), runner, opts(), out)
    assert runner.started == [] and result.reused and result.created_master
    assert conn.calls[:2] == ["login", ("forward", port, REMOTE, "127.0.0.1")]
    assert "✓ connected to gpubox via LAN 192.168.1.112:22" in err.getvalue()


def test_the_login_begun_early_is_the_one_up_waits_for_and_its_master_counts_as_new(world, cleanup):
    port = any_free_port()
    remember(port)
    world.servers[("127.0.0.1", REMOTE)] = TOKEN
    conn = Connection(world)
    cleanup.append(conn)
    place = host(conn)
    place.begin_login()
    place.begin_login()  # once per command
    out, _ = console()
    result = session.up(place, Runner(world), opts(), out)
    # The master it opened is up by now, yet it is this command's: no fast path over it.
    assert conn.calls[:2] == ["login", ("forward", port, REMOTE, "127.0.0.1")]
    assert result.reused and result.created_master


def test_no_early_login_over_a_live_master(world, cleanup):
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    place = host(conn)
    place.begin_login()
    assert conn.calls == [] and place.master_before()


class _RefusedLogin(Connection):
    def command_argv(self, remote_command: str) -> list[str]:
        return ["false"]  # never run: the login's error comes first

    def failure(self, stderr: str) -> NbremoteError:
        return NbremoteError(stderr)

    def open_master(self, connect_timeout: float | None = None, *, settle: bool = True) -> Reached | None:
        self.calls.append("login")
        raise NbremoteError("gpubox refused the login", exit_code=ExitCode.AUTH_FAILED)


def test_an_early_login_that_fails_is_the_agent_calls_error_and_is_ended(world, cleanup):
    conn = _RefusedLogin(world)
    cleanup.append(conn)
    place = host(conn)
    place.begin_login()
    with pytest.raises(NbremoteError, match="refused the login"):
        place.agent(hello_timeout=1).request("ls", {})
    place.abandon_login()
    assert conn.calls == ["login", "close"]


def test_an_abandoned_login_waits_for_its_master_and_ends_it(world, cleanup):
    conn = Connection(world)
    place = host(conn)
    place.begin_login()
    place.abandon_login()
    assert conn.calls == ["login", "close"] and not conn.alive


def test_a_runner_that_needs_the_agent_is_asked_even_with_a_remembered_server(world, cleanup):
    port = any_free_port()
    remember(port, runner="slurm", addr=NODE_ADDR, job_id="81", node="node1")
    world.servers[(NODE_ADDR, REMOTE)] = TOKEN
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    conn.forward(port, REMOTE, NODE_ADDR)  # the master still holds the old forward
    runner = Runner(
        world, name="slurm", reattach_from_record=False, addr=NODE_ADDR, warnings=("Slurm job 81 has only 5 min left",)
    )
    out, err = console()
    result = session.up(host(conn), runner, opts(), out)
    assert runner.started == ["proj"]
    # The master's own forward is taken back, so the same port goes to the server found now.
    assert result.local_port == port
    assert result.record.runner == "slurm" and result.record.addr == NODE_ADDR and result.record.job_id == "81"
    assert err.getvalue().rstrip().endswith("! Slurm job 81 has only 5 min left")


def test_a_failed_start_takes_the_forward_and_the_new_master_down(world, cleanup):
    conn = Connection(world)
    cleanup.append(conn)
    runner = Runner(world, fail=NbremoteError("jupyter not found", exit_code=ExitCode.NO_JUPYTER))
    out, _ = console()
    with pytest.raises(NbremoteError, match="jupyter not found"):
        session.up(host(conn), runner, opts(), out)
    assert conn.calls[-1] == "close" and conn.forwards == {}
    assert sessions.load_all() == {}


def test_a_server_that_never_answers_through_the_forward_is_an_error_and_nothing_is_kept(world, cleanup):
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    runner = Runner(world, answers=False)
    out, _ = console()
    with pytest.raises(NbremoteError) as caught:
        session.up(host(conn), runner, opts(), out)
    assert caught.value.message.startswith("Jupyter on gpubox does not answer through localhost:")
    assert conn.forwards == {} and "close" not in conn.calls  # the master was there before: it stays
    assert sessions.load_all() == {}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dir": "a\nb"}, "directory 'a\\nb' is not valid"),
        ({"env": "x\x1b"}, "environment 'x\\x1b' is not valid"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(world, changes, message):
    conn = Connection(world)
    runner = Runner(world)
    out, _ = console()
    with pytest.raises(NbremoteError) as caught:
        session.up(host(conn), runner, opts(**changes), out)
    assert caught.value.exit_code == ExitCode.USAGE and caught.value.message.startswith(message)
    assert conn.calls == [] and runner.started == []


def test_a_socket_on_this_machine_is_refused(world):
    out, _ = console()
    with pytest.raises(NbremoteError, match="--socket needs a HOST"):
        session.up(ThisMachine(), Runner(world), opts(host=None, socket=True), out)


def test_down_cancels_the_forward_forgets_the_session_and_lets_the_master_go(world, cleanup):
    port = any_free_port()
    record = remember(port, runner="slurm", addr=NODE_ADDR, job_id="81")
    other = remember(any_free_port(), dir="other")  # a host session: not the Slurm runner's
    conn = Connection(world, alive=True)
    cleanup.append(conn)
    conn.forward(port, REMOTE, NODE_ADDR)
    runner = Runner(world, name="slurm")
    out, _ = console()
    stopped = session.down(host(conn), runner, directory="proj", all_dirs=False, timeout=1, console=out)
    assert stopped == [{"dir": "/home/me/proj", "pid": 4242}] and runner.stopped == [("proj", False)]
    assert ("cancel", port, REMOTE, NODE_ADDR) in conn.calls and port not in conn.forwards
    assert list(sessions.load_all().values()) == [other] and record.key not in sessions.load_all()
    assert runner.released == 0  # the host session still uses the master
    last = Runner(world)
    session.down(host(conn), last, directory="other", all_dirs=False, timeout=1, console=out)
    assert sessions.load_all() == {} and last.released == 1


def test_ls_joins_the_laptops_record_of_the_runners_sessions_only(world):
    record = remember(8890)
    rows = session.ls(host(Connection(world)), Runner(world), timeout=1)
    assert rows == [{"dir": "/home/me/proj", "local_port": record.local_port, "keeper_pid": None, "forwards": []}]
    assert session.ls(host(Connection(world)), Runner(world, name="slurm"), timeout=1)[0]["local_port"] is None
