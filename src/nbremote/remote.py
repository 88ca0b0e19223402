"""A place to run the agent: a host over ssh, or this machine itself.

Both give an AgentCall and know how to reach a port the agent reports:
through an ssh forward for a host, directly for this machine.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from nbremote import agentlink, paths, profiles, reach, sshfiles
from nbremote.errors import NbremoteError
from nbremote.ssh import Connection, Target, parse_target

log = logging.getLogger(__name__)


class Place:
    """Where the agent runs; ``label`` names it in messages."""

    label: str
    host: str  # the key under which the laptop remembers sessions ("" here)

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        raise NotImplementedError


class ThisMachine(Place):
    label = "this machine"
    host = ""

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        env = dict(os.environ)
        # `nbremote` run from a venv without activating it: its jupyter is beside python.
        bindir = os.path.dirname(sys.executable)
        env["PATH"] = os.pathsep.join([bindir] + [d for d in env.get("PATH", "").split(os.pathsep) if d != bindir])
        return agentlink.AgentCall(
            agentlink.local_argv, where=self.label, on_ssh_failure=None, hello_timeout=hello_timeout, env=env
        )


class Host(Place):
    connection: Connection | reach.PathConnection

    def __init__(self, target: Target, *, timeout: float, interactive: bool, persist: bool):
        self.target = target
        self.label = target.label
        self.host = target.label
        self.interactive = interactive
        # Without a terminal no one can answer a password prompt: fail instead of hanging.
        self.connection = Connection(
            target, control_dir=paths.runtime_dir(), timeout=timeout, batch=not interactive, persist=persist
        )

    def connect(self) -> reach.Reached | None:
        """Log in now (the agent call would otherwise log in itself); a profile says by which path."""
        return self.connection.open_master()

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        # While a person may be typing a password, only ssh's own timeouts apply.
        return agentlink.AgentCall(
            lambda request: self.connection.command_argv(agentlink.remote_command(request)),
            where=self.label,
            on_ssh_failure=self.connection.failure,
            hello_timeout=None if self.interactive else hello_timeout,
        )


class ProfileHost(Host):
    """A host profile: its connection races the profile's addresses (reach.PathConnection)."""

    def __init__(self, profile: profiles.Profile, *, timeout: float, interactive: bool, persist: bool):
        self.profile = profile
        self.label = self.host = profile.name
        self.interactive = interactive
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

    def connect(self) -> reach.Reached | None:
        """Race the addresses unless a master is up already (then None)."""
        if self.connection.master_alive():
            return None
        return self.connection.open_master()

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        self.connect()
        return super().agent(hello_timeout)


def place_for(host: str | None, *, timeout: float, interactive: bool, persist: bool) -> Place:
    if not host:
        return ThisMachine()
    profile = profiles.find(host)
    if profile is not None:
        return ProfileHost(profile, timeout=timeout, interactive=interactive, persist=persist)
    return Host(parse_target(host), timeout=timeout, interactive=interactive, persist=persist)
