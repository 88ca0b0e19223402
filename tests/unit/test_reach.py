"""The address race: staggered starts, first login wins, losers killed, failures combined."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from nbremote import reach
from nbremote.addresses import Address, Relay
from nbremote.errors import ExitCode, NbremoteError
from nbremote.ssh import Target


class StepClock:
    """race()'s clock: each reading moves time on by one step, so when an attempt starts is counted
    in race()'s own readings and no test depends on how busy the machine is."""

    STEP = 0.05

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.STEP
        return self.now


class FakeConnection:
    """start_master runs `sh -c 'sleep S; exit C'` in place of ssh."""

    def __init__(
        self,
        seconds: float,
        code: int = 0,
        stderr: str = "ssh: connect to host x: Connection timed out",
        exit_code: ExitCode = ExitCode.UNREACHABLE,
        clock: StepClock | None = None,
    ):
        self.seconds, self.code, self.stderr, self.exit_code = seconds, code, stderr, exit_code
        self.target = Target(label="gpubox", destination="gpubox")
        self.control_path = Path("/nonexistent/nbremote-test")
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.clock = clock

    def start_master(self, connect_timeout):
        self.connect_timeout = connect_timeout
        self.started_at = self.clock.now if self.clock else None
        script = f"sleep {self.seconds}; echo {self.stderr!r} >&2; exit {self.code}"
        self.proc = subprocess.Popen(["sh", "-c", script], stderr=subprocess.PIPE, text=True)
        return self.proc

    def failure(self, stderr):
        reason = "no answer after 5 s" if "timed out" in stderr else "connection refused"
        return NbremoteError(f"cannot reach gpubox at x:22 ({reason})", exit_code=self.exit_code)

    def close(self):
        raise AssertionError("no master to close")


def _candidates(*conns):
    return [(Address(f"10.0.0.{i + 1}", 22), c) for i, c in enumerate(conns)]


def test_dead_preferred_address_costs_one_stagger_step():
    clock = StepClock()
    dead, good = FakeConnection(30, clock=clock), FakeConnection(0.05, clock=clock)
    index, seconds = reach.race(_candidates(dead, good), connect_timeout=5, stagger=0.25, clock=clock)
    assert index == 1
    # Started on race()'s first reading past the stagger step (began is its first reading).
    began = StepClock.STEP
    assert 0.25 <= good.started_at - began < 0.25 + 2 * StepClock.STEP
    assert seconds < 0.25 + 6 * StepClock.STEP
    assert dead.proc.poll() is not None, "the losing attempt must be killed"


def test_preferred_address_wins_when_it_works_and_the_next_never_starts():
    first, second = FakeConnection(0.1), FakeConnection(0.0)
    index, _ = reach.race(_candidates(first, second), connect_timeout=5, stagger=0.25)
    assert index == 0
    assert second.proc is None


def test_a_relay_path_gets_time_for_the_hops_login_within_its_connect_timeout():
    """The keeper races with a 1 s connect timeout; through a relay ssh waits for the box's
    banner with it, and that comes after the hop's whole login (1.6 s at 100 ms)."""
    refused, hop = FakeConnection(0.0, code=255, stderr="Connection refused"), FakeConnection(0.0)
    candidates = [
        (Address("10.0.0.1", 22), refused),
        (Address("127.0.0.1", 2222, Relay("bob", "vps.example.org")), hop),
    ]
    assert reach.race(candidates, connect_timeout=1, stagger=0.25)[0] == 1
    assert refused.connect_timeout == 1 and hop.connect_timeout == reach.RELAY_CONNECT_TIMEOUT


def test_a_fast_failure_starts_the_next_at_once():
    clock = StepClock()
    refused = FakeConnection(0.0, code=255, stderr="Connection refused", clock=clock)
    good = FakeConnection(0.05, clock=clock)
    # A long stagger: the next attempt must start on the failure, long before its step is due.
    index, _ = reach.race(_candidates(refused, good), connect_timeout=5, stagger=5, clock=clock)
    assert index == 1
    assert good.started_at < 0.5


def test_all_unreachable_lists_every_address():
    with pytest.raises(NbremoteError) as caught:
        reach.race(
            _candidates(FakeConnection(0, 255, "Connection refused"), FakeConnection(0, 255)),
            connect_timeout=5,
            stagger=0.05,
        )
    error = caught.value
    assert error.exit_code == ExitCode.UNREACHABLE
    assert error.message == "cannot reach gpubox"
    assert error.details == [
        "tried 10.0.0.1:22 (connection refused; never answered), 10.0.0.2:22 (no answer after 5 s; never answered)"
    ]
    assert "at home, connect once over the LAN: the server then tells this laptop its current WAN address" in (
        error.hint
    )
    assert "a DNS name that follows the WAN address, or a relay (`nbremote server relay`)" in error.hint


def test_all_unreachable_with_a_dns_name_names_it():
    conns = [FakeConnection(0, 255, "Connection refused"), FakeConnection(0, 255)]
    candidates = [(Address("10.0.0.1", 22), conns[0]), (Address("gpubox.example.org", 22), conns[1])]
    with pytest.raises(NbremoteError) as caught:
        reach.race(candidates, connect_timeout=5, stagger=0.05)
    assert "gpubox.example.org:22 (no answer after 5 s; never answered)" in caught.value.details[0]
    assert "away, its DNS name gpubox.example.org must follow the WAN address" in caught.value.hint
    assert "at home, connect once over the LAN" in caught.value.hint


def test_all_unreachable_says_when_each_address_last_answered():
    reach.record_answer("gpubox", Address("10.0.0.2", 22), time.time() - 2 * 3600 - 5)
    with pytest.raises(NbremoteError) as caught:
        reach.race(
            _candidates(FakeConnection(0, 255, "Connection refused"), FakeConnection(0, 255)),
            connect_timeout=5,
            stagger=0.05,
        )
    assert caught.value.details == [
        "tried 10.0.0.1:22 (connection refused; never answered), "
        "10.0.0.2:22 (no answer after 5 s; last answered 2 h 00 min ago)"
    ]
    reach.forget_answers("gpubox")
    assert reach.answered() == {}


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (None, "never answered"),
        (5, "last answered 5 s ago"),
        (61, "last answered 1 min 01 s ago"),
        (3 * 86400, "last answered 3 d 0 h ago"),
    ],
)
def test_ago(seconds, shown):
    now = 1_700_000_000.0
    assert reach.ago(None if seconds is None else now - seconds, now) == shown


def test_a_broken_answers_file_is_no_record(isolated):
    (isolated.state / "nbremote").mkdir(parents=True)
    (isolated.state / "nbremote" / "answered.json").write_text("[1, 2")
    assert reach.answered() == {}


def test_a_refused_login_beats_an_unreachable_address():
    auth = FakeConnection(0, 255, "Permission denied (publickey)", exit_code=ExitCode.AUTH_FAILED)
    with pytest.raises(reach.LoginRefused) as caught:
        reach.race(_candidates(FakeConnection(0, 255), auth), connect_timeout=5, stagger=0.05)
    assert caught.value.exit_code == ExitCode.AUTH_FAILED
    assert caught.value.index == 1


# --- a relay path: the login to the relay, then the box's through it ------------------------

VIA = Relay("bob", "vps.example.org")


class FakeHop(FakeConnection):
    """The laptop's master to the relay: start_master logs in (a sleep), close ends it."""

    timeout = 5

    def __init__(self, seconds: float, tmp_path: Path, code: int = 0, stderr: str = "", **kw):
        super().__init__(seconds, code, stderr, **kw)
        self.control_path = tmp_path / "relay-master"
        self.alive, self.closed = False, 0

    def master_alive(self):
        return self.alive

    def start_master(self, connect_timeout):
        if self.code == 0:
            self.control_path.touch()  # ssh -f makes its socket before it goes to the background
        return super().start_master(connect_timeout)

    def close(self):
        self.closed += 1
        self.control_path.unlink()


def _via_relay(first: FakeConnection, box: FakeConnection):
    return [(Address("192.168.1.112", 22), first), (Address("127.0.0.1", 2222, VIA), box)]


def test_a_relay_path_logs_in_to_the_relay_then_to_the_box_through_it_and_keeps_that_login(tmp_path):
    clock = StepClock()
    refused = FakeConnection(0.0, code=255, stderr="Connection refused", clock=clock)
    hop, box = FakeHop(0.2, tmp_path, clock=clock), FakeConnection(0.05, clock=clock)
    index, _ = reach.race(_via_relay(refused, box), connect_timeout=5, stagger=5, clock=clock, hops={1: hop})
    assert index == 1
    assert hop.started_at is not None and box.started_at > hop.started_at  # not before the relay's login ended
    assert hop.connect_timeout == hop.timeout  # reaching the relay; the box's answer through it has longer
    assert box.connect_timeout == reach.RELAY_CONNECT_TIMEOUT
    assert hop.closed == 0 and hop.control_path.exists()  # the box's connection goes through it


def test_a_live_master_to_the_relay_is_used_at_once(tmp_path):
    refused = FakeConnection(0.0, code=255, stderr="Connection refused")
    hop, box = FakeHop(0.0, tmp_path), FakeConnection(0.0)
    hop.alive = True
    assert reach.race(_via_relay(refused, box), connect_timeout=5, stagger=5, hops={1: hop})[0] == 1
    assert hop.proc is None  # no second login to the relay


def test_warm_starts_the_relays_login_with_the_race_and_the_box_login_at_its_turn(tmp_path):
    """From the café the LAN address never answers: its stagger step hides the relay's login."""
    clock = StepClock()
    dead = FakeConnection(30, clock=clock)
    hop, box = FakeHop(0.05, tmp_path, clock=clock), FakeConnection(0.05, clock=clock)
    candidates = _via_relay(dead, box)
    index, _ = reach.race(candidates, connect_timeout=5, stagger=0.5, clock=clock, hops={1: hop}, warm=True)
    assert index == 1
    assert hop.started_at <= 2 * StepClock.STEP  # with the race, before the LAN address's step ran out
    began = StepClock.STEP
    # The box's login at the relay path's turn (the relay's login ended in between: a few more readings).
    assert 0.5 <= box.started_at - began < 0.5 + 6 * StepClock.STEP
    assert dead.proc.poll() is not None and hop.closed == 0


def test_a_warm_relay_login_is_ended_when_a_direct_address_wins(tmp_path):
    """At home after a café: the LAN answers, and no login to the relay is left behind."""
    lan, hop, box = FakeConnection(0.3), FakeHop(0.0, tmp_path), FakeConnection(0.0)
    assert reach.race(_via_relay(lan, box), connect_timeout=5, stagger=5, hops={1: hop}, warm=True)[0] == 0
    assert hop.proc is not None and hop.closed == 1 and box.proc is None


def test_without_warm_the_relay_is_not_logged_in_to_while_a_direct_address_wins(tmp_path):
    lan, hop, box = FakeConnection(0.1), FakeHop(0.0, tmp_path), FakeConnection(0.0)
    assert reach.race(_via_relay(lan, box), connect_timeout=5, stagger=5, hops={1: hop})[0] == 0
    assert hop.proc is None and box.proc is None


def test_a_relay_that_refuses_the_key_is_the_reason_and_the_box_is_not_tried(tmp_path):
    refused = FakeConnection(0.0, code=255, stderr="Connection refused")
    hop = FakeHop(0.0, tmp_path, code=255, stderr="bob@vps.example.org: Permission denied (publickey).")
    box = FakeConnection(0.0)
    with pytest.raises(NbremoteError) as caught:
        reach.race(_via_relay(refused, box), connect_timeout=5, stagger=5, hops={1: hop}, warm=True)
    assert box.proc is None
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    reason = "127.0.0.1:2222 via bob@vps.example.org (the relay vps.example.org refused bob's key; never answered)"
    assert reason in caught.value.details[0]
