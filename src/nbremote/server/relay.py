"""`nbremote server relay USER@HOST[:PORT]`: reachable from anywhere when no port can be forwarded.

Behind carrier-grade NAT no forward on the home router can work. The box then
keeps a reverse ssh tunnel (`ssh -N -R 127.0.0.1:TUNNEL:127.0.0.1:SSHD`) to a
machine the user already has with a public address; the laptop reaches the
box at that machine's loopback port TUNNEL through an ssh hop to it. The
relay needs no root, no GatewayPorts and no software of ours: a stock sshd
and an account. The box's host key stays pinned end to end, so the relay
sees only ciphertext.

The tunnel is rebuilt after drops, the way the laptop's keeper rebuilds its
own: at once, then every second while the relay stays away (every ten
seconds after two minutes), so a relay that comes back is used again within
about a second. The first build is checked: a relay that refuses the key or
whose port is taken is an error, not a retry loop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nbremote.addresses import Relay
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_TUNNEL_PORT = 2222
ALIVE_INTERVAL = 10  # seconds between keepalives; three missed ones end the tunnel
FAST_RETRY_FOR = 120.0


@dataclass(frozen=True)
class Plan:
    relay: Relay
    tunnel_port: int  # on the relay's loopback
    local_port: int  # this machine's sshd
    key: Path | None  # None: ssh's default keys (and agent)
    known_hosts: Path  # the relay's own host key, trusted on first use


def tunnel_argv(plan: Plan) -> list[str]:
    argv = [
        "ssh",
        "-v",
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-o",
        f"ServerAliveInterval={ALIVE_INTERVAL}",
        "-o",
        "ServerAliveCountMax=3",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={plan.known_hosts}",
        "-o",
        "ControlPath=none",
    ]
    if plan.key is not None:
        argv += ["-i", str(plan.key), "-o", "IdentitiesOnly=yes"]
    argv += [
        "-R",
        f"127.0.0.1:{plan.tunnel_port}:127.0.0.1:{plan.local_port}",
        "-p",
        str(plan.relay.port),
        "-l",
        plan.relay.user,
        "--",
        plan.relay.host,
    ]
    return argv


_ESTABLISHED = re.compile(r"remote forward success for: listen 127\.0\.0\.1:(\d+)")


def failure(stderr: str, plan: Plan) -> NbremoteError:
    """ssh's words (at -v) turned into what to do about the relay."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("debug")]
    text = "\n".join(lines)
    where = f"{plan.relay.user}@{plan.relay.host}:{plan.relay.port}"
    if "Permission denied" in text:
        return NbremoteError(
            f"the relay {where} refused the key",
            hint=f"add this machine's public key ({plan.key or '~/.ssh/id_ed25519'}.pub) to "
            f"~/.ssh/authorized_keys of {plan.relay.user} on {plan.relay.host}",
            exit_code=ExitCode.AUTH_FAILED,
        )
    if "remote port forwarding failed" in text:
        return NbremoteError(
            f"port {plan.tunnel_port} is already taken on the relay {plan.relay.host}",
            hint="another tunnel or program holds it there: choose another with --tunnel-port",
            exit_code=ExitCode.PORT_BUSY,
        )
    if "IDENTIFICATION HAS CHANGED" in text:
        return NbremoteError(
            f"the host key of the relay {plan.relay.host} has changed: refusing to connect",
            hint=f"if the relay was reinstalled, remove its line from {plan.known_hosts}",
            exit_code=ExitCode.HOST_KEY,
        )
    match = re.search(r"ssh: connect to host \S+ port \d+: ([^\r\n]+)", text)
    if match or "Could not resolve hostname" in text:
        return NbremoteError(
            f"cannot reach the relay {where} ({match.group(1) if match else 'name not found'})",
            hint="check the relay's address and that its sshd runs",
            exit_code=ExitCode.UNREACHABLE,
        )
    return NbremoteError(
        f"the tunnel to the relay {where} failed" + (f": {lines[-1]}" if lines else ""),
        details=lines[:-1][-5:],
        exit_code=ExitCode.ERROR,
    )


class Tunnel:
    """One `ssh -R` to the relay; `open` returns once the relay listens on the tunnel port."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.proc: subprocess.Popen | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self._established = threading.Event()

    def open(self, timeout: float) -> None:
        log.debug("run %s", shlex.join(tunnel_argv(self.plan)))
        # ssh's messages are matched: LC_ALL=C.
        self.proc = subprocess.Popen(
            tunnel_argv(self.plan),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while not self._established.wait(0.05):
            if self.proc.poll() is not None:
                reader.join(2)  # everything ssh said before it exited
                raise failure("\n".join(self.tail), self.plan)
            if time.monotonic() > deadline:
                self.close()
                raise NbremoteError(
                    f"no answer from the relay {self.plan.relay.host} within {timeout:g} s",
                    hint="check the relay's address and port",
                    exit_code=ExitCode.UNREACHABLE,
                )

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.tail.append(line)
            if _ESTABLISHED.search(line):
                self._established.set()

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def keep(
    plan: Plan,
    first: Tunnel,
    *,
    timeout: float,
    on_event: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    rounds: int | None = None,
) -> None:
    """Rebuild the tunnel whenever it ends, forever (or for `rounds` rebuilds)."""
    tunnel, rebuilt = first, 0
    try:
        while rounds is None or rebuilt < rounds:
            code = tunnel.wait()
            on_event(f"tunnel ended (ssh exit {code}); rebuilding")
            down_since = clock()
            while True:
                tunnel = Tunnel(plan)
                try:
                    tunnel.open(timeout)
                    break
                except NbremoteError as exc:
                    pause = 1.0 if clock() - down_since < FAST_RETRY_FOR else 10.0
                    on_event(f"{exc.message}; again in {pause:g} s")
                    sleep(pause)
            rebuilt += 1
            on_event(f"tunnel rebuilt after {clock() - down_since:.1f} s")
    finally:
        tunnel.close()


class RelayRecord:
    """The relay this box keeps a tunnel to, for `server invite`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> tuple[str, int] | None:
        try:
            doc = json.loads(self.path.read_text())
            return str(doc["relay"]), int(doc["tunnel"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record(self, plan: Plan) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"relay": str(plan.relay), "tunnel": plan.tunnel_port, "at": time.time()}
        atomic_write(self.path, json.dumps(doc, indent=1).encode(), mode=0o644)
