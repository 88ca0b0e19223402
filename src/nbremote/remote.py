"""A place to run the agent: a host over ssh, or this machine itself.

Both give an AgentCall and know how to reach a port the agent reports:
through an ssh forward for a host, directly for this machine.
"""
from __future__ import annotations

import os
import sys

from nbremote import agentlink, paths
from nbremote.ssh import Connection, Target, parse_target


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
        return agentlink.AgentCall(agentlink.local_argv(), where=self.label, on_ssh_failure=None,
                                   hello_timeout=hello_timeout, env=env)


class Host(Place):
    def __init__(self, target: Target, *, timeout: float, interactive: bool, persist: bool):
        self.target = target
        self.label = target.label
        self.host = target.label
        self.interactive = interactive
        # Without a terminal no one can answer a password prompt: fail instead of hanging.
        self.connection = Connection(target, control_dir=paths.runtime_dir(), timeout=timeout,
                                     batch=not interactive, persist=persist)

    def agent(self, hello_timeout: float | None) -> agentlink.AgentCall:
        # While a person may be typing a password, only ssh's own timeouts apply.
        return agentlink.AgentCall(self.connection.command_argv(agentlink.remote_command()),
                                   where=self.label, on_ssh_failure=self.connection.failure,
                                   hello_timeout=None if self.interactive else hello_timeout)


def place_for(host: str | None, *, timeout: float, interactive: bool, persist: bool) -> Place:
    if not host:
        return ThisMachine()
    return Host(parse_target(host), timeout=timeout, interactive=interactive, persist=persist)
