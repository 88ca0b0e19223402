"""A place to run the agent: a host over ssh, or this machine itself.

Both give an AgentCall and know how to reach a port the agent reports:
through an ssh forward for a host, directly for this machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import replace

from nbremote import addresses, logs, paths, profiles, sessions
from nbremote.addresses import Address
from nbremote.errors import NbremoteError
from nbremote.ssh import Connection, Target, parse_target

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any, Callable

    from nbremote import agentlink, reach

log = logs.get(__name__)


class Place:
    """Where the agent runs; ``label`` names it in messages."""

    label: str
    host: str  # the key under which the laptop remembers sessions ("" here)

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        raise NotImplementedError

    def begin_login(self) -> None:
        """Nothing to log in to here; a Host starts its login."""

    def abandon_login(self) -> None:
        """Nothing to end here; a Host ends the master its early login opened."""


class ThisMachine(Place):
    label = "this machine"
    host = ""

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        from nbremote import agentlink  # the agent is packed only for a call: `up`'s reattach has no use for it

        env = dict(os.environ)
        # `nbremote` run from a venv without activating it: its jupyter is beside python.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join([bindir] + [d for d in env.get("PATH", "").split(os.pathsep) if d != bindir])
        return agentlink.AgentCall(
            agentlink.local_argv, where=self.label, on_ssh_failure=None, hello_timeout=hello_timeout, env=env
        )


class _Login:
    """A login run in a thread; its result (or error) is taken once, by whoever needs the master."""

    def __init__(self, log_in: Callable[[], reach.Reached | None]):
        self._result: reach.Reached | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(log_in,), daemon=True)
        self._thread.start()

    def _run(self, log_in: Callable[[], reach.Reached | None]) -> None:
        try:
            self._result = log_in()
        except BaseException as exc:  # handed to the thread that joins
            self._error = exc

    def result(self) -> reach.Reached | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


class Host(Place):
    connection: Connection | reach.PathConnection
    _login: _Login | None = None
    began_login = False  # this command logged in (begin_login): any master is its own

    def __init__(self, target: Target, *, timeout: float, interactive: bool, persist: bool):
        self.target = target
        self.label = target.label
        self.host = target.label
        self.interactive = interactive
        # Without a terminal no one can answer a password prompt: fail instead of hanging.
        self.connection = Connection(
            target, control_dir=paths.runtime_dir(), timeout=timeout, batch=not interactive, persist=persist
        )

    def begin_login(self) -> None:
        """Start logging in, in the background, when no master may be up: the rest of the
        command's start-up (its imports, packing the agent) then runs during the login."""
        if not self.began_login and not self.connection.may_have_master():
            self.began_login = True
            self._login = _Login(self._log_in)

    def abandon_login(self) -> None:
        """The command failed: end the master its early login opened."""
        if self._login is not None:
            with contextlib.suppress(Exception):
                self.connect()
        if self.began_login:
            self.connection.close()

    def connect(self, settle: bool = True) -> reach.Reached | None:
        """Log in now (the agent call would otherwise log in itself), or wait for the login
        begun already; a profile says by which path (settle=False: before its round trip is
        timed, see `via`)."""
        if self._login is not None:
            login, self._login = self._login, None
            return login.result()
        return self._log_in()

    def via(self) -> str:
        """How this command's login reached the host, for "connected to HOST…" ("" for a plain
        ssh destination: ssh alone knows)."""
        return ""

    def _log_in(self) -> reach.Reached | None:
        return self.connection.open_master()

    def master_before(self) -> bool:
        """Whether a master was up before this command (not one its own login opened)."""
        return not self.began_login and self.connection.master_alive()

    def path(self, rtt_s: float | None = None) -> dict[str, Any]:
        """How this host is reached: the kind (LAN, WAN, IPv6, VPN, relay) and address of the
        path, its round trip when known, and each way in with when it last answered (a plain
        ssh destination has only the one ssh resolves, and no record)."""
        where = self.connection.endpoint()
        host = f"[{where.hostname}]" if ":" in where.hostname else where.hostname
        return {
            "kind": addresses.kind(where.hostname),
            "address": f"{host}:{where.port}",
            "rtt_ms": None if rtt_s is None else round(rtt_s * 1000, 1),
            "addresses": [],
        }

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        from nbremote import agentlink  # the agent is packed only for a call: `up`'s reattach has no use for it

        # While a person may be typing a password, only ssh's own timeouts apply.
        return agentlink.AgentCall(
            self._agent_argv,
            where=self.label,
            on_ssh_failure=self.connection.failure,
            hello_timeout=None if self.interactive else hello_timeout,
        )

    def _agent_argv(self, request: str) -> list[str]:
        from nbremote import agentlink

        argv = self.connection.command_argv(agentlink.remote_command(request))  # packed while the login runs
        if self._login is not None:
            self.connect()
        return argv


class ProfileHost(Host):
    """A host profile: its connection races the profile's addresses (reach.PathConnection)."""

    connection: reach.PathConnection

    def __init__(
        self,
        profile: profiles.Profile,
        *,
        timeout: float,
        interactive: bool,
        persist: bool,
        notify: Callable[[str], None] | None = None,
    ):
        self.profile = profile
        self.label = self.host = profile.name
        self.interactive = interactive
        self.notify = notify
        self.renumbered: list[tuple[Address | None, Address]] = []  # what this session changed in the profile
        self.logged_in = False  # this command's own race won (its path is this command's to record)
        # Imported here: a plain ssh host (and `up`'s reattach before the CLI) has no use for them.
        from nbremote import reach, sshfiles

        recent = profiles.last_paths().get(profile.name)
        self.connection = reach.PathConnection(
            profile,
            sshfiles.connection_options,
            control_dir=paths.runtime_dir(),
            timeout=timeout,
            interactive=interactive,
            persist=persist,
            preferred=recent.address if recent else None,
            on_reached=self._remember,
        )

    def _remember(self, reached: reach.Reached) -> None:
        from nbremote import reach, sshfiles

        reach.record_answer(self.profile.name, reached.address, time.time())
        profiles.record_path(
            self.profile.name,
            profiles.LastPath(
                address=str(reached.address),
                kind=reached.kind,
                login_s=round(reached.login_s, 3),
                rtt_ms=None if reached.rtt_s is None else round(reached.rtt_s * 1000, 1),
                when=time.time(),
            ),
        )
        try:
            sshfiles.refresh_config(profiles.load())
        except NbremoteError as exc:  # the session works; only plain `ssh NAME` keeps its old address
            log.warning("not updating %s: %s", sshfiles.our_config_path(), exc.message)

    def path(self, rtt_s: float | None = None) -> dict[str, Any]:
        from nbremote import reach

        address = self.connection.active_address()
        reached = self.connection.settled()
        if rtt_s is None and reached is not None and reached.address == address:
            rtt_s = reached.rtt_s
        return {
            "kind": None if address is None else reach.kind_of(address),
            "address": None if address is None else str(address),
            "rtt_ms": None if rtt_s is None else round(rtt_s * 1000, 1),
            "addresses": reach.ways_in(self.profile),
        }

    def _log_in(self) -> reach.Reached | None:
        """Race the addresses unless a master is up already (then None). The round trip over
        the new master is timed beside what follows (the agent call): `connect` settles it."""
        if self.connection.master_alive():
            return None
        self.logged_in = True
        return self.connection.open_master(settle=False)

    def connect(self, settle: bool = True) -> reach.Reached | None:
        reached = super().connect()
        return self.connection.settled() if settle and reached is not None else reached

    def via(self) -> str:
        reached = self._settled()
        return f" via {reached.describe()}" if reached is not None else ""

    def _settled(self) -> reach.Reached | None:
        """This command's login with its round trip, its path recorded (None: a master was up)."""
        return self.connection.settled() if self.logged_in else None

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        from nbremote import agentlink  # noqa: F401  imported while the login runs, not after it

        if self._login is not None or not self.logged_in:
            self.connect(settle=False)  # the race decides which address the agent's ssh takes
        call = super().agent(hello_timeout)
        call.on_hello = self._take_public
        return call

    def _take_public(self, hello: agentlink.Hello) -> None:
        """The server's public addresses into the profile, whichever path this session took;
        first, the path of this command's login (every command that asks the agent records it)."""
        from nbremote import reach, sshfiles

        self._settled()
        if not hello.public:
            return
        try:
            made = reach.take_public(self.profile, hello.public)
        except (OSError, NbremoteError) as exc:  # the session works; the profile keeps its old address
            log.warning("not updating the profile of %s: %s", self.profile.name, exc)
            return
        if not made:
            return
        self.profile = replace(self.profile, addresses=addresses.applied(self.profile.addresses, made))
        self.connection.renumbered(self.profile, made)
        self.renumbered += made
        try:
            sshfiles.refresh_config(profiles.load())
        except NbremoteError as exc:
            log.warning("not updating %s: %s", sshfiles.our_config_path(), exc.message)
        for old, address in made:
            message = reach.renumbered_text(self.profile.name, old, address)
            if self.notify is not None:
                self.notify(message)
            else:  # a command that shows no progress (jobs, run, doctor): still said once, on stderr
                log.warning("%s", message)


# Logins begun before the CLI was imported (entry.py), by what place_for was asked: `up`'s
# own place_for takes its one, so its login is the one `up` waits on.
_begun: dict[tuple[str, float, bool], Host] = {}


def begin_login_for(host: str, *, timeout: float, interactive: bool) -> Place:
    """The place `up HOST` will ask place_for for, its login begun now."""
    place = place_for(host, timeout=timeout, interactive=interactive, persist=True)
    # A background keeper may be logging in to this host's master too: two logins at once
    # end each other's master (keeper.pause). `up` stops those keepers before its own login,
    # which it begins itself then, once the CLI is imported.
    if isinstance(place, Host) and not sessions.keeper_running(host):
        place.begin_login()
        _begun[(host, timeout, interactive)] = place
    return place


def awaits_up(place: Place) -> bool:
    """Whether `up`'s place_for will take this place (begin_login_for kept it for `up`)."""
    return any(begun is place for begun in _begun.values())


def abandon_unclaimed(place: Place) -> None:
    """End the login begun by begin_login_for when the command never took it (it refused
    its arguments first)."""
    if awaits_up(place):
        place.abandon_login()


def place_for(
    host: str | None,
    *,
    timeout: float,
    interactive: bool,
    persist: bool,
    notify: Callable[[str], None] | None = None,
) -> Place:
    """notify(text) hears of a change the server's report made in the host's profile."""
    if not host:
        return ThisMachine()
    begun = _begun.pop((host, timeout, interactive), None) if persist else None
    if begun is not None:
        if isinstance(begun, ProfileHost):
            begun.notify = notify
        return begun
    profile = profiles.find(host)
    if profile is not None:
        return ProfileHost(profile, timeout=timeout, interactive=interactive, persist=persist, notify=notify)
    return Host(parse_target(host), timeout=timeout, interactive=interactive, persist=persist)
