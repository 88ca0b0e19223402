"""`nbremote server invite`: the one line a laptop needs, printed on the server.

The LAN addresses of this machine, then the DNS name `server ddns` keeps
pointed at the WAN address, then the WAN address when `server wan-ip`
or `expose` has recorded one, then any --address given (a DNS name, a VPN
address); the port sshd serves; the SHA256 fingerprint of the ed25519 host key;
the relay, when `server relay` has built a tunnel to one.
"""

from __future__ import annotations

import getpass
import os
import socket

import click

from nbremote import invite as invites
from nbremote.console import Console
from nbremote.server import netinfo, steps, system
from nbremote.server.sshd import Sshd


@click.command(name="invite")
@click.option("--user", help="The user the laptop logs in as [default: $SUDO_USER, else you].")
@click.option("--port", type=click.IntRange(1, 65535), help="The ssh port [default: the one sshd serves].")
@click.option(
    "--address",
    "extra",
    multiple=True,
    metavar="ADDR",
    help="Another address to offer after the LAN and WAN ones (a DNS name, a VPN address).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the invite as JSON.")
def invite(user, port, extra, as_json) -> None:
    """Print the line for `nbremote add NAME --invite LINE` on the laptop."""
    console = Console.for_terminal(json_mode=as_json)
    wan = steps.known_wan()
    made = steps.build_invite(
        user=user or os.environ.get("SUDO_USER") or getpass.getuser(),
        lan=netinfo.lan_addresses(),
        wan=wan,
        extra=list(extra),
        port=port or min(steps.ssh_ports(Sshd(), system.is_root())),
        host_key_line=steps.host_key_line(),
        relay=steps.known_relay(),
        dns_name=steps.known_dns_name(),
    )
    line = invites.render(made)
    if as_json:
        console.emit_json(
            {
                "invite": line,
                "user": made.user,
                "addresses": list(made.hosts),
                "port": made.port,
                "fingerprint": made.fingerprint,
                "relay": None if made.relay is None else str(made.relay),
                "tunnel": made.tunnel_port,
            }
        )
        return
    if wan is None:
        console.note("no WAN address known (`nbremote server wan-ip` finds it): LAN addresses only")
    console.note("On your laptop:")
    console.result(f"  nbremote add {socket.gethostname()} --invite {line}")
