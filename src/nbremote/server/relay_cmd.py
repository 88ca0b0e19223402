"""`nbremote server relay`: the command around server/relay.py. Parse, call, render."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from nbremote.addresses import parse_relay
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import relay as relays


def command(*, state_dir: Callable[[], Path], sshd_port: Callable[[int | None], int]) -> click.Command:
    """The `relay` command, given the group's state folder and sshd port (no import back into it)."""

    @click.command(name="relay")
    @click.argument("destination", metavar="USER@HOST[:PORT]")
    @click.option(
        "--tunnel-port",
        type=click.IntRange(1024, 65535),
        default=relays.DEFAULT_TUNNEL_PORT,
        show_default=True,
        help="The port on the relay's loopback that leads to this machine's sshd.",
    )
    @click.option(
        "--key",
        type=click.Path(dir_okay=False),
        help="The private key to log in to the relay with [default: your ssh keys and agent].",
    )
    @click.option(
        "--port", type=click.IntRange(1, 65535), help="This machine's sshd port [default: the one sshd serves]."
    )
    @click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=15.0,
        show_default=True,
        help="Seconds to wait for the relay to accept the tunnel.",
    )
    @click.option("--once", is_flag=True, help="Check that the tunnel can be built, record the relay, and exit.")
    def relay(destination, tunnel_port, key, port, timeout, once) -> None:
        """Keep a reverse ssh tunnel to a relay: for a box behind carrier-grade NAT.

        The relay is a machine of yours with a public address (a small VPS, a
        university login node) where USER has this machine's public key in
        ~/.ssh/authorized_keys; it needs no root, no GatewayPorts, no software of
        ours. The tunnel ends on the relay's loopback; laptops reach it through an
        ssh hop to the relay, with this machine's host key pinned end to end.
        Stays in the foreground and rebuilds the tunnel after drops (run it from
        a systemd unit, or in tmux); `nbremote server invite` then carries the relay.
        """
        console = Console.for_terminal()
        target = parse_relay(destination)
        if key is not None and not Path(key).is_file():
            raise NbremoteError(f"no key at {key}", hint="give the path of a private key", exit_code=ExitCode.USAGE)
        plan = relays.Plan(
            relay=target,
            tunnel_port=tunnel_port,
            local_port=sshd_port(port),
            key=Path(key).absolute() if key else None,
            known_hosts=state_dir() / "relay_known_hosts",
        )
        tunnel = relays.Tunnel(plan)
        with console.progress(f"opening the tunnel to {target}"):
            tunnel.open(timeout)
        relays.RelayRecord(state_dir() / "relay.json").record(plan)
        console.done(f"{target.host} 127.0.0.1:{tunnel_port} → this machine's sshd on {plan.local_port}")
        console.note("`nbremote server invite` now carries the relay; laptops need an account on the relay too")
        if once:
            tunnel.close()
            return
        console.note("rebuilding it after drops; Ctrl-C stops it")
        try:
            relays.keep(plan, tunnel, timeout=timeout, on_event=console.note)
        finally:
            tunnel.close()

    return relay
