"""Keeps a session's tunnel alive across network drops, on the same local port.

`ssh -O check` only asks the local master process, and ServerAlive needs 45 s
to give up on a dead path; so the keeper probes the whole path instead (one
GET of /api/status through the forward, every second). After two failed
probes it drops the master and logs in again, racing the profile's addresses
anew (the laptop may have moved from the home LAN to a café: the WAN address
wins then), with a 1 s connect timeout (10 s through a relay, whose hop logs in
first) and a pause that starts at 0.25 s and doubles up to 1 s; so the tunnel is
back within about a second plus one login of the network returning. Open browser tabs carry on because the local port
does not change.

It runs inside a foreground `nbremote up`, or for `up --detach` as a small
background process per session (`python -m nbremote.keeper HOST DIR`) that
`nbremote down` stops. It keeps every session alike: for one in a Slurm job
the forward goes through the login node to the compute node (or through the
laptop's ssh to the node, logged in again after the login node), and when Jupyter
no longer answers through a rebuilt tunnel the runner says why (the job hit
its time limit, was cancelled, its node failed): said once, then it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nbremote import logs, nodelogin, paths, profiles, runners, sessions
from nbremote.console import Console
from nbremote.errors import NbremoteError
from nbremote.localnet import probe
from nbremote.reach import Reached
from nbremote.remote import Host, Place, ProfileHost, place_for
from nbremote.sessions import SessionRecord

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.runner import Runner

log = logs.get(__name__)

CHECK_EVERY = 1.0
FAILED_PROBES = 2
PROBE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 1.0
# Probes through a freshly rebuilt tunnel before Jupyter counts as gone: the first request
# over a new master can miss PROBE_TIMEOUT on a loaded machine, and giving up is final.
SETTLE_PROBES = 3


def backoff(attempt: int) -> float:
    """Seconds between the start of failed attempt N (from 1) and the next one.

    Fast at first, for a blip; capped at 1 s, because the cost of trying is one
    SYN per address and every second waited is a second the browser waits.
    """
    return min(FIRST_BACKOFF * 2.0 ** (attempt - 1), MAX_BACKOFF)


@dataclass
class Tunnel:
    """What the keeper restores: a forward from local_port to the server's port."""

    place: Host
    local_port: int
    remote_port: int | str
    token: str
    addr: str = "127.0.0.1"  # the forward's destination seen from the host: its loopback, or a compute node
    extra: tuple[tuple[int, int], ...] = ()  # (local, remote) ports of the host's loopback, `nbremote forward`
    hop: str | None = None  # a compute node logged in to through the host: addr is seen from there

    @classmethod
    def of(cls, place: Host, record: SessionRecord) -> Tunnel:
        return cls(place, record.local_port, record.remote_port, record.token, record.addr, record.forwards, record.hop)

    def forward(self) -> None:
        """Put the forwards back through the live master (and the node's, logged in to first)."""
        carrier = nodelogin.link(self.place, self.hop)
        if self.hop is not None and not carrier.master_alive():
            carrier.open_master(connect_timeout=CONNECT_TIMEOUT)  # the node's key pinned when `up` began
        carrier.forward(self.local_port, self.remote_port, self.addr)
        for local, remote in self.extra:
            try:
                self.place.connection.forward(local, remote, "127.0.0.1")
            except NbremoteError as exc:  # Jupyter's tunnel matters more than one extra port
                log.warning("localhost:%d → %s:%d not put back: %s", local, self.place.label, remote, exc.message)

    def cancel(self) -> None:
        nodelogin.link(self.place, self.hop).cancel(self.local_port, self.remote_port, self.addr)
        for local, remote in self.extra:
            self.place.connection.cancel(local, remote, "127.0.0.1")

    def close(self) -> None:
        """End the masters, the node's first: it holds the local port, and its way runs through the other."""
        if self.hop is not None:
            nodelogin.link(self.place, self.hop).close()
        self.place.connection.close()


class Keeper:
    """Checks the tunnel and rebuilds it when it fails.

    `report` gets the passing state, redrawn on a status line (`reconnecting
    (attempt 3, 4 s)…`); `announce` gets the changes worth a line of their own
    (the tunnel lost, the tunnel back and by which path). `ended` tells, when
    Jupyter no longer answers through a rebuilt tunnel, why it is gone for good.
    """

    def __init__(
        self,
        tunnel: Tunnel,
        *,
        report: Callable[[str], None],
        announce: Callable[[str], None],
        via: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        ended: Callable[[], NbremoteError | None] = lambda: None,
    ):
        self.tunnel = tunnel
        self.ended = ended
        self.report = report
        self.announce = announce
        self.via = via  # the path in use as `KIND ADDRESS`, when the host is a profile
        self.sleep = sleep
        self.clock = clock
        self.failures = 0
        self.lost_at: float | None = None  # when the first of the failed probes in a row began

    def healthy(self) -> bool:
        return probe(self.tunnel.local_port, self.tunnel.token, self.clock() + PROBE_TIMEOUT, self.clock)

    def check(self) -> None:
        """One health check; rebuilds the tunnel after FAILED_PROBES failures in a row."""
        began = self.clock()
        if self.healthy():
            self.failures = 0
            return
        if self.failures == 0:
            self.lost_at = began
        self.failures += 1
        log.info("probe through localhost:%d failed (%d)", self.tunnel.local_port, self.failures)
        if self.failures >= FAILED_PROBES:
            self.rebuild(since=self.lost_at)
            self.failures = 0

    def rebuild(self, since: float | None = None) -> None:
        """Log in again and put the forward back; times are counted from `since` (the first
        failed probe), so what the user reads is how long the tunnel was gone."""
        place, port = self.tunnel.place, self.tunnel.local_port
        conn = place.connection
        began = self.clock() if since is None else since
        attempt = 0
        was = f" via {self.via}" if self.via else ""
        self.announce(f"lost the connection to {place.label}{was}; reconnecting")
        self.tunnel.close()  # the dead master still holds the local port
        while True:
            attempt += 1
            self.report(f"reconnecting (attempt {attempt}, {self.clock() - began:.0f} s)…")
            tried = self.clock()
            try:
                # A profile races its addresses again here: the laptop may be on another network.
                reached = conn.open_master(connect_timeout=CONNECT_TIMEOUT)
                self.tunnel.forward()
            except (NbremoteError, subprocess.TimeoutExpired) as exc:
                log.info("attempt %d failed: %s", attempt, getattr(exc, "message", exc))
                # The login node answers but its compute node does not take the login: once the
                # job has ended, pam_slurm_adopt refuses it for good, which the runner can tell.
                gone = None
                if self.tunnel.hop is not None and conn.master_alive():
                    with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
                        gone = self.ended()
                if gone is not None:
                    raise gone from None
                self.tunnel.close()
                # An attempt that timed out has waited already: a fresh SYN then goes out
                # every CONNECT_TIMEOUT, so the path is found within that of its return.
                self.sleep(max(0.0, backoff(attempt) - (self.clock() - tried)))
                continue
            with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
                # sshd turns TCP_NODELAY on only when it sets up a session; without one, every
                # tunnelled request of the browser would wait on Nagle (a round trip more).
                conn.round_trip()
            if any(self.healthy() for _ in range(SETTLE_PROBES)):
                path = ""
                if isinstance(reached, Reached):
                    self.via = f"{reached.kind} {reached.address}"
                    path = f" via {reached.describe()}"
                self.announce(f"back{path} after {self.clock() - began:.1f} s: localhost:{port} → {place.label} again")
                return
            raise self.ended() or NbremoteError(
                f"the Jupyter on {place.label} no longer answers (it was stopped or the server restarted)",
                hint=f"`nbremote up {place.label}` starts a fresh one",
            )


def last_via(place: Host) -> str | None:
    """The path `up` took to a profile (`LAN 192.168.1.112:22`), as it recorded it."""
    if not isinstance(place, ProfileHost):
        return None
    recent = profiles.last_paths().get(place.profile.name)
    return f"{recent.kind} {recent.address}" if recent else None


def keeper_for(
    place: Host,
    runner: Runner,
    record: SessionRecord,
    *,
    report: Callable[[str], None],
    announce: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Keeper:
    return Keeper(
        Tunnel.of(place, record),
        report=report,
        announce=announce,
        via=last_via(place),
        sleep=sleep,
        ended=lambda: runner.ended(place, record),
    )


def hold(
    place: Place,
    runner: Runner,
    record: SessionRecord,
    url: str,
    *,
    created_master: bool,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Stay in the foreground until Ctrl-C, keeping the tunnel up; a session whose runner says it
    ended for good (a Slurm job's time limit) ends this with that error."""
    keeper = None
    if isinstance(place, Host):

        def announce(text: str) -> None:
            console.end_status()
            console.note(text)

        keeper = keeper_for(place, runner, record, report=console.status, announce=announce, sleep=sleep)
    what = runner.serving(record)
    what = f" · {what}" if what else ""
    began = time.monotonic()
    try:
        while True:
            elapsed = int(time.monotonic() - began)
            via = f" · via {keeper.via}" if keeper is not None and keeper.via else ""
            console.status(f"● serving {url.split('?')[0]}{what}{via} · {elapsed // 60} min {elapsed % 60:02d} s")
            sleep(CHECK_EVERY)
            if keeper is not None:
                current = sessions.find(record.host, record.dir)
                if current is not None and current.token == record.token:
                    keeper.tunnel.extra = current.forwards  # `nbremote forward` may have added one since
                keeper.check()
    except KeyboardInterrupt:
        console.end_status()
        stop = f"nbremote down {record.host}" if record.host else "nbremote down"
        if isinstance(place, Host):
            tunnel = Tunnel.of(place, sessions.find(record.host, record.dir) or record)
            tunnel.cancel()
            if created_master:
                tunnel.close()
            console.note(f"stopped forwarding; {runner.left_running(record, place.label, stop)}")
        else:
            console.note(runner.left_running(record, place.label, stop))
    except NbremoteError:
        console.end_status()
        raise


# --- the background keeper of `up --detach` -------------------------------------


def spawn(host: str, directory: str) -> None:
    """Start the background keeper for a detached session (it exits if one runs)."""
    log_path = paths.state_dir() / "keeper.log"
    with open(log_path, "ab") as log_file:
        os.chmod(log_path, 0o600)
        subprocess.Popen(
            [sys.executable, "-m", "nbremote.keeper", host, directory],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )


def stop(host: str, directory: str, wait: float = 5.0) -> None:
    _stop_all(host, [directory], wait)


def _stop_all(host: str, directories: list[str], wait: float = 5.0) -> list[str]:
    """The keepers of these sessions ended, all signalled before any is waited for; the
    directories whose keeper was running."""
    running = [(d, pid) for d in directories if (pid := sessions.keeper_pid(host, d)) is not None]
    for _, pid in running:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(sessions.keeper_pid(host, d) is not None for d, _ in running):
        time.sleep(0.01)
    return [d for d, _ in running]


def pause(host: str, directory: str, *, logging_in: bool, holding: bool) -> list[str]:
    """Stop the background keepers that would fight this `up` over the host's one master.

    While `up` logs in, every keeper of the host may be rebuilding that same master
    (the masters were ended, or the network dropped): two logins at once leave one
    of them without its control socket, and a keeper's clean-up (close) ends the
    master `up` has just opened ("Failed to connect to new control master", or
    "local port … is busy" when the keeper's forward holds the port). A foreground
    `up` keeps its own session's tunnel, so that session's keeper stops too. Returns
    the directories whose keepers stopped; `resume` starts them again."""
    directories = [r.dir for r in sessions.for_host(host) if logging_in or (holding and r.dir == directory)]
    return _stop_all(host, directories)


def resume(host: str, directories: list[str]) -> None:
    for directory in directories:
        spawn(host, directory)


def _serve(record: SessionRecord) -> None:
    place = place_for(record.host, timeout=10, interactive=False, persist=True)
    assert isinstance(place, Host), "a detached session is on a host: this machine needs no forward"
    keeper = keeper_for(
        place,
        runners.for_record(record),
        record,
        report=lambda text: log.info("%s", text),
        announce=lambda text: log.warning("%s", text),
    )
    while True:
        time.sleep(CHECK_EVERY)
        current = sessions.find(record.host, record.dir)
        if current is None or current.token != record.token:
            log.info("session %s %s ended; keeper exits", record.host, record.dir)
            return
        keeper.tunnel.extra = current.forwards  # `nbremote forward` may have added one since
        keeper.check()


def main(argv: list[str]) -> int:
    import logging

    host, directory = argv
    # One log for every keeper: each line names its session.
    session = f"{host} {directory}".replace("%", "%%")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s keeper[%(process)d] {session}: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # 0600 like every file of ours, though the folder is 0700 already.
    with os.fdopen(
        os.open(sessions.keeper_pid_file(host, directory), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+"
    ) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # this session has its keeper already
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        record = sessions.find(host, directory)
        if record is None:
            return 0
        try:
            _serve(record)
        except NbremoteError as exc:
            log.error("%s (%s)", exc.message, exc.hint)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
