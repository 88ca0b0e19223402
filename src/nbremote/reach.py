"""Reaching a host profile by whichever of its addresses works: Happy Eyeballs for ssh.

Logins to the addresses start 250 ms apart in order of preference (the next
one at once when all started ones have failed); the first to complete the ssh
login wins and the others are killed. The preferred address wins whenever it
works, and a dead one costs one stagger step, not a connect timeout.

PathConnection stands in for ssh.Connection wherever a Host's connection is
used (session, keeper, status): `open_master` races, everything else goes to
the connection of the address that won (or whose master is still alive).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from nbremote import addresses, durations, logs, paths, profiles, sshfiles
from nbremote.addresses import Address
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import Profile
from nbremote.ssh import Connection, Target

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable

log = logs.get(__name__)

STAGGER = 0.25
# ssh's ConnectTimeout also bounds the wait for the server's banner, which through a relay comes
# only after the hop's own whole login: at a 100 ms RTT that is 1.6 s, past the keeper's 1 s, and
# every rebuild through the relay would time out. The hop bounds reaching the relay itself
# (sshfiles.proxy_command's ConnectTimeout=5); this is for its login and the box's answer.
RELAY_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Reached:
    address: Address
    login_s: float  # from the start of the race to the completed login
    rtt_s: float | None

    @property
    def kind(self) -> str:
        return kind_of(self.address)

    def describe(self) -> str:
        rtt = f" ({self.rtt_s * 1000:.0f} ms)" if self.rtt_s is not None else ""
        return f"{self.kind} {self.address}{rtt}"


def kind_of(address: Address) -> str:
    """LAN, WAN, IPv6, VPN or relay: how a path through this address is named."""
    return "relay" if address.via else addresses.kind(address.host)


def ways_in(profile: Profile) -> list[dict[str, Any]]:
    """Each of the profile's ways in, best first, with its kind and when it last completed a login."""
    seen = answered().get(profile.name, {})
    return [{"address": str(a), "kind": kind_of(a), "answered": seen.get(str(a))} for a in profile.endpoints()]


def ways_text(ways: list[dict[str, Any]], now: float) -> str:
    """`LAN 192.168.1.112:22222 (last answered 2 s ago) · WAN …`: the ways in, as hosts, ls and status show them."""
    return " · ".join(f"{w['kind']} {w['address']} ({ago(w['answered'], now)})" for w in ways)


def renumbered_text(name: str, old: Address | None, new: Address) -> str:
    if old is None:
        return f"{name}'s {kind_of(new)} address added: {new} (from the server)"
    return f"{name}'s {kind_of(new)} address changed: {old} → {new} (from the server)"


def path_text(path: dict[str, Any]) -> str:
    """`via LAN 192.168.1.112:22222 (2 ms)`: the way in use."""
    rtt = f" ({path['rtt_ms']:.0f} ms)" if path.get("rtt_ms") is not None else ""
    return f"via {path['kind']} {path['address']}{rtt}"


# --- when each address last answered (state, per profile) ------------------------------


def answered() -> dict[str, dict[str, float]]:
    """{profile: {address: time it last completed a login}}; a broken file is no record."""
    try:
        raw = json.loads(paths.state_file("answered.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {
        name: {a: float(t) for a, t in seen.items() if isinstance(t, (int, float))}
        for name, seen in raw.items()
        if isinstance(seen, dict)
    }


def record_answer(name: str, address: Address, when: float) -> None:
    records = answered()
    records.setdefault(name, {})[str(address)] = when
    paths.write_private(paths.state_dir() / "answered.json", json.dumps(records, indent=1))


def forget_answers(name: str) -> None:
    records = answered()
    if records.pop(name, None) is not None:
        paths.write_private(paths.state_dir() / "answered.json", json.dumps(records, indent=1))


def take_public(profile: Profile, reported: tuple[tuple[str, str | None], ...]) -> list[tuple[Address | None, Address]]:
    """Put the server's public addresses (from its agent's hello) in the profile, in hosts.toml:
    the (old, new) addresses changed, old None for one added. Safe because only the host whose pinned key this
    session proved can report them, and a new address is used with that pinned key only."""
    changes = addresses.refreshed(profile.addresses, list(reported))
    if not changes:  # every agent call of every command gets here: no file is read for nothing
        return []
    made = profiles.replace_addresses(profile.name, changes)
    records = answered()
    seen = records.get(profile.name, {})
    # The old address's last answer would stay behind forever: no profile lists it now.
    dropped = [seen.pop(str(old.with_port(profile.port)), None) for old, _ in made if old is not None]
    if any(when is not None for when in dropped):
        paths.write_private(paths.state_dir() / "answered.json", json.dumps(records, indent=1))
    return made


def ago(when: float | None, now: float) -> str:
    if when is None:
        return "never answered"
    return f"last answered {durations.duration(now - when)} ago"


class LoginRefused(NbremoteError):
    """sshd at candidate `index` answered but would not let us in (keys refused, host key wrong)."""

    def __init__(self, error: NbremoteError, index: int):
        super().__init__(error.message, hint=error.hint, exit_code=error.exit_code, details=error.details)
        self.index = index


@dataclass
class _Attempt:
    index: int
    conn: Connection
    proc: subprocess.Popen[str]
    hop: bool = False  # the login to the relay of candidate `index`, not the box's


def race(
    candidates: list[tuple[Address, Connection]],
    *,
    connect_timeout: float,
    stagger: float = STAGGER,
    clock: Callable[[], float] = time.monotonic,
    hops: dict[int, Connection] | None = None,
    warm: bool = False,
) -> tuple[int, float]:
    """Index of the first candidate whose master login completes, and seconds taken.

    hops: {index of a relay path: its master to the relay}. The box's login through a relay
    goes through that master (`-W` over it: one round trip, no second key exchange), so a
    relay path whose master is not up logs in to the relay first, then to the box. warm:
    that login to the relay starts with the race (the last connection went through the
    relay), not at the relay path's turn, so the direct addresses' stagger steps hide it;
    the box's login through it still waits for its turn. A master to the relay this race
    started is ended unless the relay path won.

    Raises the most useful failure when none does: one that reached sshd (a
    refused login, a changed host key) over "cannot reach".
    """
    hops = hops or {}
    results: queue.Queue[tuple[_Attempt, int, str]] = queue.Queue()
    attempts: list[_Attempt] = []
    failures: dict[int, str] = {}
    hop_done: dict[int, tuple[int, str]] = {}  # the relay logins this race finished: (exit code, stderr)
    timeouts = [
        connect_timeout if a.via is None else max(connect_timeout, RELAY_CONNECT_TIMEOUT) for a, _ in candidates
    ]
    began = clock()
    deadline = began + max(timeouts, default=connect_timeout) + 10  # a login that hangs after connecting
    winner = None
    turn = 0  # candidates whose turn has come, in order

    def wait_for(attempt: _Attempt) -> None:
        _, err = attempt.proc.communicate()
        results.put((attempt, attempt.proc.returncode, err))

    def start(index: int, conn: Connection, timeout: float, hop: bool = False) -> None:
        attempt = _Attempt(index, conn, conn.start_master(timeout), hop)
        attempts.append(attempt)
        threading.Thread(target=wait_for, args=(attempt,), daemon=True).start()

    def hop_running(index: int) -> bool:
        return any(a.hop and a.index == index for a in attempts) and index not in hop_done

    def take_turn(index: int) -> None:
        hop = hops.get(index)
        if hop is None or index in hop_done and hop_done[index][0] == 0 or hop.master_alive():
            start(index, candidates[index][1], timeouts[index])
        elif index in hop_done:
            failures[index] = hop_done[index][1]  # the relay refused or did not answer: no box login
        elif not hop_running(index):
            start(index, hop, hop.timeout, hop=True)

    try:
        if warm:
            for index, hop in hops.items():
                if index > 0 and not hop.master_alive():
                    start(index, hop, hop.timeout, hop=True)
        while winner is None and len(failures) < len(candidates):
            due = began + turn * stagger
            if turn < len(candidates) and (clock() >= due or len(failures) == turn):
                take_turn(turn)
                turn += 1
                continue
            until = (due if turn < len(candidates) else deadline) - clock()
            if clock() >= deadline:
                break
            try:
                attempt, code, err = results.get(timeout=max(0.0, min(until, deadline - clock())))
            except queue.Empty:
                continue
            index = attempt.index
            if attempt.hop:
                hop_done[index] = (code, err)
                if code != 0:
                    log.debug("the relay of %s failed: %s", candidates[index][0], err.strip())
                if index < turn:  # its turn came while it logged in: the box's login now, or its failure
                    take_turn(index)
            elif code == 0:
                winner = index
            else:
                failures[index] = err
                log.debug("%s failed: %s", candidates[index][0], err.strip())
    finally:
        for attempt in attempts:
            # A login to the relay stays only under the box's login through it that won.
            if attempt.index != winner:
                if attempt.proc.poll() is None:
                    attempt.proc.kill()
                    attempt.proc.wait()
                # A loser may have logged in just as the winner did, or been killed after forking.
                if attempt.conn.control_path.exists():
                    attempt.conn.close()
    if winner is not None:
        return winner, clock() - began
    for index in range(len(candidates)):
        if index not in failures:
            failures[index] = f"ssh: connect to host {candidates[index][0]}: Connection timed out"
    errors = [_failure(candidates[i], failures[i]) for i in range(len(candidates))]
    for index, error in enumerate(errors):
        if error.exit_code != ExitCode.UNREACHABLE:
            raise LoginRefused(error, index)  # sshd answered: its word is what matters
    raise _unreachable(candidates[0][1].target.label, errors, [a for a, _ in candidates])


def _failure(candidate: tuple[Address, Connection], stderr: str) -> NbremoteError:
    address, conn = candidate
    reason = None
    if address.via is not None:
        # Through a relay, ssh's stderr mixes the hop's words with the box's: the hop's come first.
        reason = sshfiles.relay_reason(stderr, address.via, address.port)
        hop = dict(conn.target.options).get("ProxyCommand")
        if reason is None and "kex_exchange_identification" in stderr and hop:
            # A master (ControlPersist) sends its hop's stderr to /dev/null: ask the hop alone.
            reason = sshfiles.relay_reason(sshfiles.probe_hop(hop, address, conn.timeout), address.via, address.port)
    if reason is None:
        return conn.failure(stderr)
    return NbremoteError(
        f"cannot reach {conn.target.label} through the relay ({reason})",
        hint="the relay's address and your account there are in `nbremote hosts`",
        exit_code=ExitCode.UNREACHABLE,
    )


def _unreachable(name: str, errors: list[NbremoteError], tried: list[Address]) -> NbremoteError:
    reasons = []
    seen, now = answered().get(name, {}), time.time()
    for address, error in zip(tried, errors):
        reason = error.message.rsplit("(", 1)[-1].rstrip(")") if "(" in error.message else error.message
        reasons.append(f"{address} ({reason}; {ago(seen.get(str(address)), now)})")
    home = "at home, connect once over the LAN: the server then tells this laptop its current WAN address"
    if any(address.via for address in tried):
        return NbremoteError(
            f"cannot reach {name}",
            details=["tried " + ", ".join(reasons)],
            hint=f"check that the server is on and that `nbremote server relay` runs there; {home}; "
            "the addresses and the relay are in `nbremote hosts`",
            exit_code=ExitCode.UNREACHABLE,
        )
    names = [a.host for a in tried if addresses.kind(a.host) == "WAN" and addresses.ip_version(a.host) is None]
    away = (
        f"away, its DNS name {names[0]} must follow the WAN address, and the router must forward the ssh "
        "port (`nbremote server expose` on the server)"
        if names
        else "away, the router must forward the ssh port (`nbremote server expose` on the server) to the WAN "
        "address in the profile (`nbremote server wan-ip` there says the current one); a DNS name that follows "
        "the WAN address, or a relay (`nbremote server relay`), reaches the box whatever its address"
    )
    return NbremoteError(
        f"cannot reach {name}",
        details=["tried " + ", ".join(reasons)],
        hint=f"check that the server is on and sshd runs; {home}; {away}; the addresses are in `nbremote hosts`",
        exit_code=ExitCode.UNREACHABLE,
    )


class PathConnection:
    """The ssh connection of a host profile: one Connection per address, one of them in use."""

    def __init__(
        self,
        profile: Profile,
        options_for: Callable[[Profile, Address], tuple[tuple[str, str], ...]],
        *,
        control_dir: Path,
        timeout: float,
        interactive: bool,
        persist: bool,
        preferred: str | None = None,
        on_reached: Callable[[Reached], None] | None = None,
        stagger: float = STAGGER,
    ):
        self.profile = profile
        self.timeout = timeout
        self.interactive = interactive
        self.stagger = stagger
        self.on_reached = on_reached
        self.reached: Reached | None = None
        self._timing: _Timing | None = None  # the round trip of the last login, being timed

        def connection(address: Address, batch: bool) -> Connection:
            target = Target(label=profile.name, destination=profile.name, options=options_for(profile, address))
            return Connection(target, control_dir=control_dir, timeout=timeout, batch=batch, persist=persist)

        self._connection = connection
        # Concurrent password prompts would be nonsense: the race logs in with keys (or an agent) only.
        self.candidates = [(a, connection(a, True)) for a in profile.endpoints()]
        by_name = {str(a): c for a, c in self.candidates}
        self._active: Connection | None = None
        self._fallback = by_name.get(preferred or "", self.candidates[0][1])
        # Last time through the relay: likely again (the laptop is still away), so its login starts at once.
        self.warm = any(a.via is not None and str(a) == preferred for a, _ in self.candidates)

    def renumbered(self, profile: Profile, changes: list[tuple[Address | None, Address]]) -> None:
        """The profile with its new addresses: a later race (the keeper's) tries them instead.
        The connection in use stays as it is: it works."""
        self.profile = profile
        for old, new in changes:
            if old is None:
                at = addresses.added_at([a for a, _ in self.candidates])
                self.candidates.insert(
                    at, (new.with_port(profile.port), self._connection(new.with_port(profile.port), True))
                )
                continue
            for i, (address, conn) in enumerate(self.candidates):
                if address == old.with_port(profile.port) and conn is not self._active:
                    self.candidates[i] = (
                        new.with_port(profile.port),
                        self._connection(new.with_port(profile.port), True),
                    )

    def active_address(self) -> Address | None:
        """The address of the connection in use, once there is one."""
        return next((a for a, c in self.candidates if c is self._active), None)

    def _current(self) -> Connection:
        if self._active is None and not self.master_alive():
            return self._fallback
        assert self._active is not None
        return self._active

    def may_have_master(self) -> bool:
        return any(conn.may_have_master() for _, conn in self.candidates)

    def master_alive(self) -> bool:
        for _, conn in self.candidates:
            if conn.master_alive():
                self._active = conn
                return True
        return False

    def open_master(self, connect_timeout: float | None = None, *, settle: bool = True) -> Reached:
        """Race the addresses and keep the winner's master. Then one round trip over it is timed
        and the path recorded (on_reached): at once, or with settle=False in a thread beside
        what the caller does next (its agent call need not wait for a second ssh), until
        settled() takes it."""
        timeout = connect_timeout or self.timeout
        try:
            hops = {
                i: sshfiles.relay_master(a.via, self.profile.key)
                for i, (a, _) in enumerate(self.candidates)
                if a.via is not None
            }
            index, seconds = race(
                self.candidates, connect_timeout=timeout, stagger=self.stagger, hops=hops, warm=self.warm
            )
        except LoginRefused as exc:
            if not (self.interactive and exc.exit_code == ExitCode.AUTH_FAILED):
                raise
            # Keys alone were refused: on a terminal, one login that may ask (a passphrase, a password).
            index, began = exc.index, time.monotonic()
            address = self.candidates[index][0]
            conn = self._connection(address, False)
            conn.open_master(timeout)
            self.candidates[index] = (address, conn)
            seconds = time.monotonic() - began
        address, conn = self.candidates[index]
        self._active = conn
        self.reached = reached = Reached(address, seconds, None)
        self._timing = _Timing(conn)
        return (self.settled() or reached) if settle else reached

    def settled(self) -> Reached | None:
        """The path of the last login with its round trip, recorded (on_reached) once it is
        known; None before any login of this connection."""
        timing, self._timing = self._timing, None
        if timing is not None and self.reached is not None:
            self.reached = replace(self.reached, rtt_s=timing.seconds())
            log.debug("reached %s via %s", self.profile.name, self.reached.describe())
            if self.on_reached is not None:
                self.on_reached(self.reached)
        return self.reached

    def close(self) -> None:
        for _, conn in self.candidates:
            conn.close()
        self._active = None

    def __getattr__(self, name: str) -> Any:
        # forward, cancel, command_argv, failure, endpoint, … of the address in use.
        return getattr(self._current(), name)


class _Timing:
    """One round trip over a new master, timed in a thread."""

    def __init__(self, conn: Connection):
        self._seconds: float | None = None
        self._thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
        self._thread.start()

    def _run(self, conn: Connection) -> None:
        try:
            self._seconds = conn.round_trip()
        except (NbremoteError, subprocess.TimeoutExpired):
            pass

    def seconds(self) -> float | None:
        self._thread.join()
        return self._seconds
