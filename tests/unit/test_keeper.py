"""The keeper: when it rebuilds, how fast it retries, what it says, and that the port stays."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from types import SimpleNamespace

import pytest

from nbremote import keeper, sessions
from nbremote.addresses import Address
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.onhost import HostRunner
from nbremote.reach import Reached
from nbremote.remote import Host
from nbremote.sessions import SessionRecord
from nbremote.slurm import SlurmRunner

LOCAL, REMOTE = 8890, 38119
WAN = Reached(Address("11.22.33.1", 22022), login_s=0.3, rtt_s=0.041)
UNREACHABLE = NbremoteError("cannot reach gpubox", exit_code=ExitCode.UNREACHABLE)


class Clock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.now += seconds


class FakeConnection:
    """Each open_master takes `attempt_s` of the clock and gives the next outcome in turn."""

    def __init__(self, clock: Clock, outcomes: list, attempt_s: float = 0.0, forward_fails: int = 0):
        self.clock, self.outcomes, self.attempt_s = clock, list(outcomes), attempt_s
        self.forward_fails = forward_fails
        self.calls: list = []

    def close(self):
        self.calls.append("close")

    def open_master(self, connect_timeout=None):
        assert connect_timeout == keeper.CONNECT_TIMEOUT
        self.calls.append("open")
        self.clock.now += self.attempt_s
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def forward(self, local_port, remote_port, remote_host):
        self.calls.append(("forward", local_port, remote_port) + (() if remote_host == "127.0.0.1" else (remote_host,)))
        if self.forward_fails:
            self.forward_fails -= 1
            raise NbremoteError(f"local port {local_port} is busy", exit_code=ExitCode.PORT_BUSY)

    def round_trip(self):
        return 0.041

    def cancel(self, local_port, remote_port, remote_host):
        self.calls.append(("cancel", local_port, remote_port))
        return True


@pytest.fixture
def probes(monkeypatch):
    """The answers of the probe through the forward, in turn (then healthy for good)."""
    answers: list[bool] = []
    monkeypatch.setattr(keeper, "probe", lambda port, token, deadline, clock: answers.pop(0) if answers else True)
    return answers


def make_keeper(conn, clock, via="LAN 192.168.1.112:22", addr="127.0.0.1", ended=lambda: None):
    said: list[tuple[str, str]] = []
    place = SimpleNamespace(label="gpubox", connection=conn)
    kept = keeper.Keeper(
        keeper.Tunnel(place, LOCAL, REMOTE, "t" * 32, addr),
        report=lambda text: said.append(("status", text)),
        announce=lambda text: said.append(("line", text)),
        via=via,
        sleep=clock.sleep,
        clock=clock,
        ended=ended,
    )
    return kept, said


def test_backoff_is_fast_at_first_and_capped():
    assert [keeper.backoff(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_reconnect_backs_off_reports_each_attempt_and_the_new_path(probes):
    clock = Clock()
    conn = FakeConnection(clock, [UNREACHABLE, UNREACHABLE, UNREACHABLE, WAN])
    kept, said = make_keeper(conn, clock)
    kept.rebuild()
    assert clock.sleeps == [0.25, 0.5, 1.0]
    assert said == [
        ("line", "lost the connection to gpubox via LAN 192.168.1.112:22; reconnecting"),
        ("status", "reconnecting (attempt 1, 0 s)…"),
        ("status", "reconnecting (attempt 2, 0 s)…"),
        ("status", "reconnecting (attempt 3, 1 s)…"),
        ("status", "reconnecting (attempt 4, 2 s)…"),
        ("line", "back via WAN 11.22.33.1:22022 (41 ms) after 1.8 s: localhost:8890 → gpubox again"),
    ]
    # The dead master goes first (it holds the local port), then each failed attempt's leftovers.
    assert conn.calls == ["close"] + ["open", "close"] * 3 + ["open", ("forward", LOCAL, REMOTE)]
    assert kept.via == "WAN 11.22.33.1:22022"


def test_an_attempt_that_timed_out_is_retried_at_once(probes):
    clock = Clock()
    conn = FakeConnection(clock, [UNREACHABLE, UNREACHABLE, subprocess.TimeoutExpired("ssh", 1), WAN], attempt_s=1.0)
    kept, said = make_keeper(conn, clock)
    kept.rebuild()
    assert clock.sleeps == [0.0, 0.0, 0.0]
    assert [text for kind, text in said if kind == "status"] == [
        f"reconnecting (attempt {n}, {n - 1} s)…" for n in range(1, 5)
    ]


def test_a_local_port_still_held_is_retried_on_the_same_port(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN, WAN], forward_fails=1)
    kept, said = make_keeper(conn, clock)
    kept.rebuild()
    forwards = [c for c in conn.calls if isinstance(c, tuple)]
    assert forwards == [("forward", LOCAL, REMOTE)] * 2
    assert said[-1][1].startswith("back via WAN 11.22.33.1:22022")


def test_the_sessions_other_forwards_come_back_on_their_ports_after_jupyters(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    kept, said = make_keeper(conn, clock)
    kept.tunnel.extra = ((6006, 6006), (18787, 8787))
    kept.rebuild()
    assert [c for c in conn.calls if isinstance(c, tuple)] == [
        ("forward", LOCAL, REMOTE),
        ("forward", 6006, 6006),
        ("forward", 18787, 8787),
    ]


def test_an_extra_forward_that_cannot_come_back_leaves_jupyters_tunnel_up(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    kept, said = make_keeper(conn, clock)
    kept.tunnel.extra = ((6006, 6006),)
    forward = conn.forward

    def busy_6006(local_port, remote_port, remote_host):
        forward(local_port, remote_port, remote_host)
        if local_port == 6006:
            raise NbremoteError("local port 6006 is busy", exit_code=ExitCode.PORT_BUSY)

    conn.forward = busy_6006
    kept.rebuild()
    assert said[-1][1].startswith("back via WAN 11.22.33.1:22022")


def test_a_host_without_a_profile_comes_back_without_a_path(probes):
    clock = Clock()
    conn = FakeConnection(clock, [None])  # ssh.Connection.open_master returns nothing
    kept, said = make_keeper(conn, clock, via=None)
    kept.rebuild()
    assert said == [
        ("line", "lost the connection to gpubox; reconnecting"),
        ("status", "reconnecting (attempt 1, 0 s)…"),
        ("line", "back after 0.0 s: localhost:8890 → gpubox again"),
    ]
    assert kept.via is None


def test_one_failed_probe_is_not_enough_two_in_a_row_rebuild(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    kept, _ = make_keeper(conn, clock)
    probes.extend([False, True, False])
    kept.check()
    kept.check()
    kept.check()
    assert conn.calls == []
    probes.extend([False, True])  # the second failure in a row, then the rebuilt tunnel answers
    kept.check()
    assert conn.calls == ["close", "open", ("forward", LOCAL, REMOTE)]
    assert kept.failures == 0


def test_the_time_shown_counts_from_the_first_failed_probe(monkeypatch):
    clock = Clock()
    answers = [False, False, True]

    def probe(port, token, deadline, clock_):
        clock.now += 0 if answers[0] else keeper.PROBE_TIMEOUT  # a failed probe waits for its deadline
        return answers.pop(0)

    monkeypatch.setattr(keeper, "probe", probe)
    conn = FakeConnection(clock, [WAN])
    kept, said = make_keeper(conn, clock)
    kept.check()
    clock.sleep(keeper.CHECK_EVERY)
    kept.check()
    # Two probes that waited 2 s each, a second between them: the tunnel has been gone 5 s.
    assert said[1] == ("status", "reconnecting (attempt 1, 5 s)…")
    assert said[-1][1].startswith("back via WAN 11.22.33.1:22022 (41 ms) after 5.0 s:")


def test_a_slow_first_answer_through_the_rebuilt_tunnel_is_not_taken_for_a_dead_jupyter(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    kept, said = make_keeper(conn, clock)
    probes.extend([False] * (keeper.SETTLE_PROBES - 1))
    kept.rebuild()
    assert said[-1][1].startswith("back via WAN")


def test_a_jupyter_that_no_longer_answers_after_reconnecting_is_an_error(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    kept, _ = make_keeper(conn, clock)
    probes.extend([False] * keeper.SETTLE_PROBES)
    with pytest.raises(NbremoteError) as caught:
        kept.rebuild()
    assert caught.value.message == ("the Jupyter on gpubox no longer answers (it was stopped or the server restarted)")
    assert "`nbremote up gpubox`" in caught.value.hint


def test_a_slurm_session_is_rebuilt_through_the_login_node_to_the_same_node(probes):
    clock = Clock()
    conn = FakeConnection(clock, [UNREACHABLE, WAN])
    kept, said = make_keeper(conn, clock, addr="10.0.0.7")
    kept.rebuild()
    assert [c for c in conn.calls if isinstance(c, tuple)] == [("forward", LOCAL, REMOTE, "10.0.0.7")]
    assert said[-1][1].startswith("back via WAN 11.22.33.1:22022")


def test_a_job_that_ended_is_said_once_with_its_id_and_the_keeper_stops(probes):
    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    asked = []

    def ended():
        asked.append(1)
        return NbremoteError("Slurm job 81 reached its time limit", exit_code=ExitCode.SLURM)

    kept, said = make_keeper(conn, clock, addr="10.0.0.7", ended=ended)
    probes.extend([False] * keeper.SETTLE_PROBES)
    with pytest.raises(NbremoteError) as caught:
        kept.rebuild()
    assert caught.value.message == "Slurm job 81 reached its time limit"
    assert caught.value.exit_code == ExitCode.SLURM
    assert asked == [1]  # asked once the tunnel is back, not while the network is out
    assert not any("back" in text for _, text in said)


RECORD = SessionRecord(
    host="gpubox",
    dir="~",
    remote_dir="/home/me",
    local_port=LOCAL,
    remote_port=REMOTE,
    token="t" * 32,
    pid=41873,
    mode="lab",
    updated=0.0,
)
URL = f"http://127.0.0.1:{LOCAL}/lab?token={'t' * 32}"


@pytest.mark.parametrize("tty", [True, False])
def test_hold_shows_reconnecting_on_the_status_line_and_the_move_on_lines_of_its_own(monkeypatch, probes, tty):
    clock = Clock()
    conn = FakeConnection(clock, [UNREACHABLE, WAN])
    place = Host.__new__(Host)  # no ssh: only what hold and the keeper use
    place.label = place.host = "gpubox"
    place.connection = conn
    monkeypatch.setattr(keeper, "last_via", lambda place: "LAN 192.168.1.112:22")
    probes.extend([False, False])
    ticks = []

    def sleep(seconds):
        ticks.append(seconds)
        if len(ticks) > 3:
            raise KeyboardInterrupt

    err = io.StringIO()
    keeper.hold(place, HostRunner(), RECORD, URL, created_master=False, console=Console(err=err, tty=tty), sleep=sleep)
    text = err.getvalue()
    lines = (
        "  lost the connection to gpubox via LAN 192.168.1.112:22; reconnecting\n",
        "  back via WAN 11.22.33.1:22022 (41 ms) after ",
    )
    assert all(line in text for line in lines)
    if tty:
        assert "\r● serving http://127.0.0.1:8890/lab · via LAN 192.168.1.112:22 · 0 min 00 s\x1b[K" in text
        assert "\rreconnecting (attempt 1, 0 s)…\x1b[K" in text
        assert "\rreconnecting (attempt 2, 0 s)…\x1b[K" in text
        # Each line of its own starts on a cleared status line, and the status line shows the new path.
        assert "\r\x1b[K  back via WAN" in text
        assert "· via WAN 11.22.33.1:22022 ·" in text.split("back via WAN")[1]
    else:
        assert "reconnecting (attempt" not in text and "serving" not in text and "\r" not in text
    assert text.endswith(
        "  stopped forwarding; the notebook keeps running on gpubox. `nbremote down gpubox` stops it.\n"
    )
    assert ("cancel", LOCAL, REMOTE) in conn.calls


def test_hold_of_a_slurm_session_names_the_job_and_ends_with_the_jobs_end(monkeypatch, probes):
    class Ended(SlurmRunner):
        def ended(self, place, record):
            return NbremoteError(f"Slurm job {record.job_id} ended (cancelled)", exit_code=ExitCode.SLURM)

    clock = Clock()
    conn = FakeConnection(clock, [WAN])
    place = Host.__new__(Host)
    place.label = place.host = "cluster"
    place.connection = conn
    monkeypatch.setattr(keeper, "last_via", lambda place: None)
    record = dataclasses.replace(RECORD, host="cluster", runner="slurm", addr="10.0.0.7", job_id="81", node="node1")
    probes.extend([False, False] + [False] * keeper.SETTLE_PROBES)
    err = io.StringIO()
    with pytest.raises(NbremoteError, match=r"^Slurm job 81 ended \(cancelled\)$"):
        keeper.hold(
            place,
            Ended(),
            record,
            URL,
            created_master=False,
            console=Console(err=err, tty=True),
            sleep=lambda seconds: None,
        )
    text = err.getvalue()
    assert "\r● serving http://127.0.0.1:8890/lab · Slurm job 81 on node1 · 0 min 00 s\x1b[K" in text
    assert text.endswith("\r\x1b[K")  # the status line is gone before the error is printed
    assert ("forward", LOCAL, REMOTE, "10.0.0.7") in conn.calls


# --- `up` stops the keepers that would fight it over the master --------------------------


@pytest.fixture
def running_keepers(request):
    """Processes holding each session's keeper lock as a keeper does, by (host, dir)."""
    procs = {}
    for host, directory in [("gpubox", "~"), ("gpubox", "/data"), ("other", "~")]:
        sessions.save(SessionRecord(host, directory, "/home/a", LOCAL, REMOTE, "t" * 32, 1, "lab", 0.0))
        code = (
            "import fcntl, os, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate()\n"
            "f.write(str(os.getpid())); f.flush(); print('ready', flush=True); time.sleep(60)"
        )
        path = str(sessions.keeper_pid_file(host, directory))
        proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        procs[(host, directory)] = proc
    yield procs
    for proc in procs.values():
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _alive(procs) -> list[tuple[str, str]]:
    return sorted(key for key, proc in procs.items() if proc.poll() is None)


def test_an_up_that_logs_in_stops_every_keeper_of_its_host_and_says_which(running_keepers, monkeypatch):
    spawned = []
    monkeypatch.setattr(keeper, "spawn", lambda host, directory: spawned.append((host, directory)))
    paused = keeper.pause("gpubox", "~", logging_in=True, holding=False)
    assert sorted(paused) == ["/data", "~"]
    assert _alive(running_keepers) == [("other", "~")]
    keeper.resume("gpubox", paused)
    assert sorted(spawned) == [("gpubox", "/data"), ("gpubox", "~")]


def test_a_foreground_up_over_a_live_master_stops_only_its_sessions_keeper(running_keepers):
    assert keeper.pause("gpubox", "~", logging_in=False, holding=True) == ["~"]
    assert _alive(running_keepers) == [("gpubox", "/data"), ("other", "~")]


def test_a_detached_up_over_a_live_master_leaves_every_keeper_running(running_keepers):
    assert keeper.pause("gpubox", "~", logging_in=False, holding=False) == []
    assert _alive(running_keepers) == [("gpubox", "/data"), ("gpubox", "~"), ("other", "~")]
