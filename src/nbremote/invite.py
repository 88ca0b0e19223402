"""The invite line: everything a laptop needs to add a server, in one copyable line.

    nbr1:USER@ADDR1,ADDR2:PORT#SHA256:FINGERPRINT[,relay=RUSER@RHOST[:RPORT],tunnel=TPORT][#wait=TOKEN]

Addresses in order of preference (LAN first, then WAN or a DNS name, then a
VPN address), IPv6 ones in brackets; one port for all of them (`server init`
forwards the same port on the router); the SHA256 fingerprint of the host key
as `ssh-keygen -l` prints it. The fingerprint is enough to pin the key without
trusting on first use: `nbremote add --invite` fetches the key with
ssh-keyscan and accepts it only if its fingerprint is this one.

A box behind carrier-grade NAT adds its relay after the fingerprint:

    nbr1:USER@ADDR1:PORT#SHA256:FINGERPRINT,relay=RUSER@RHOST[:RPORT],tunnel=TPORT

The laptop then also reaches the box at the relay's loopback port TPORT,
through an ssh hop to RUSER@RHOST (`nbremote server relay` keeps the tunnel).

`#wait=TOKEN` marks an invite printed by a `server init` that waits for the
user's first key login: the laptop installs its key only while that same
wait is on (the token is in the waiting record on the server), and then
waits for the server to finish, so that its profile gets the final port.
It comes last, after the relay when there is one:

    nbr1:USER@ADDRS:PORT#SHA256:FP,relay=RUSER@RHOST[:RPORT],tunnel=TPORT#wait=TOKEN

Both sides use these two pure functions: `nbremote server invite` / `init`
render, `nbremote add --invite` parses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from nbremote.addresses import Address, Relay, check_port, parse_address, parse_relay
from nbremote.errors import ExitCode, NbremoteError

PREFIX = "nbr1:"
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}\Z")
_WAIT = re.compile(r"^[0-9a-f]{12}\Z")
WAIT_TAG = "wait="


@dataclass(frozen=True)
class Invite:
    user: str
    hosts: tuple[str, ...]
    port: int
    fingerprint: str  # SHA256:… of the host key
    relay: Relay | None = None
    tunnel_port: int | None = None  # the relay's loopback port that leads to the box's sshd
    wait: str | None = None  # the token of the `server init` waiting for this user's first key login

    @property
    def addresses(self) -> list[Address]:
        return [Address(host, self.port) for host in self.hosts]


def fingerprint(blob: str) -> str:
    """SHA256:… of a base64 public key blob, as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def valid_fingerprint(text: str) -> bool:
    if not _FINGERPRINT.match(text):
        return False
    try:
        return len(base64.b64decode(text[7:] + "=", validate=True)) == 32
    except binascii.Error:
        return False


def render(invite: Invite) -> str:
    check(invite)
    hosts = ",".join(f"[{h}]" if ":" in h else h for h in invite.hosts)
    relay = "" if invite.relay is None else f",relay={invite.relay},tunnel={invite.tunnel_port}"
    wait = f"#{WAIT_TAG}{invite.wait}" if invite.wait else ""
    return f"{PREFIX}{invite.user}@{hosts}:{invite.port}#{invite.fingerprint}{relay}{wait}"


def check(invite: Invite) -> Invite:
    """Every field valid, or a USAGE error naming the bad one."""
    if not _USER.match(invite.user):
        raise NbremoteError(f"invite: user {invite.user!r} is not a valid user name", exit_code=ExitCode.USAGE)
    if not invite.hosts:
        raise NbremoteError("invite: no address", exit_code=ExitCode.USAGE)
    for host in invite.hosts:
        if parse_address(f"[{host}]" if ":" in host else host).port is not None:
            raise NbremoteError(f"invite: address {host!r} has a port of its own", exit_code=ExitCode.USAGE)
    check_port(invite.port, "invite: port")
    if not valid_fingerprint(invite.fingerprint):
        raise NbremoteError(
            f"invite: {invite.fingerprint!r} is not a SHA256 host key fingerprint",
            hint="it looks like SHA256: and 43 characters; copy the whole line again",
            exit_code=ExitCode.USAGE,
        )
    if (invite.relay is None) != (invite.tunnel_port is None):
        raise NbremoteError(
            "invite: a relay needs its tunnel port, and a tunnel port its relay",
            hint="copy the whole line again",
            exit_code=ExitCode.USAGE,
        )
    if invite.tunnel_port is not None:
        check_port(invite.tunnel_port, "invite: tunnel port")
    if invite.wait is not None and not _WAIT.match(invite.wait):
        raise NbremoteError(
            f"invite: {invite.wait!r} is not the token of a waiting `server init`",
            hint="copy the whole line again",
            exit_code=ExitCode.USAGE,
        )
    return invite


def _relay_fields(text: str) -> tuple[Relay | None, int | None]:
    """The `,relay=…,tunnel=…` after the fingerprint (empty text: none).

    Commas, not semicolons: the line is pasted unquoted into a shell."""
    fields: dict[str, str] = {}
    for item in text.split(",")[1:]:
        key, eq, value = item.partition("=")
        if not eq or key not in ("relay", "tunnel") or key in fields:
            raise NbremoteError(
                f"invite: {item!r} is not relay=USER@HOST[:PORT] or tunnel=PORT",
                hint="copy the whole line again",
                exit_code=ExitCode.USAGE,
            )
        fields[key] = value
    relay = parse_relay(fields["relay"]) if "relay" in fields else None
    tunnel = fields.get("tunnel")
    if tunnel is not None and not tunnel.isdigit():
        raise NbremoteError(f"invite: tunnel port {tunnel!r} is not a number", exit_code=ExitCode.USAGE)
    return relay, None if tunnel is None else int(tunnel)


def parse(text: str) -> Invite:
    line = text.strip()
    shown = line if len(line) <= 80 else line[:77] + "…"
    bad = NbremoteError(
        f"{shown!r} is not an nbremote invite",
        hint="an invite looks like nbr1:USER@ADDRESS,…:PORT#SHA256:…; "
        "on the server, `nbremote server invite` prints it (copy the whole line)",
        exit_code=ExitCode.USAGE,
    )
    if not line.startswith(PREFIX) or "#" not in line or "@" not in line:
        raise bad
    # Three parts at most: the addresses, the fingerprint with its relay, the wait.
    parts = line[len(PREFIX) :].split("#")
    if len(parts) > 3:
        raise bad
    body, tail = parts[0], parts[1]
    wait = parts[2] if len(parts) == 3 else ""
    if len(parts) == 3 and not wait.startswith(WAIT_TAG):
        raise bad
    fingerprint = tail.split(",", 1)[0]
    relay, tunnel = _relay_fields(tail[len(fingerprint) :])
    user, _, where = body.partition("@")
    match = re.fullmatch(r"(.+):(\d{1,5})", where)
    if not match:
        raise bad
    hosts = []
    for item in match.group(1).split(","):
        if item.count(":") >= 2 and not item.startswith("["):
            # Without brackets the port cannot be told from the address's last group.
            raise NbremoteError(
                f"invite: IPv6 address {item!r} is not in brackets",
                exit_code=ExitCode.USAGE,
                hint="an IPv6 address goes in brackets, [2001:db8::7]; copy the whole line again",
            )
        address = parse_address(item)
        if address.port is not None:
            raise NbremoteError(
                f"invite: address {item!r} has a port of its own",
                exit_code=ExitCode.USAGE,
                hint="the one port goes after the last address",
            )
        hosts.append(address.host)
    return check(
        Invite(
            user=user,
            hosts=tuple(hosts),
            port=int(match.group(2)),
            fingerprint=fingerprint,
            relay=relay,
            tunnel_port=tunnel,
            wait=wait[len(WAIT_TAG) :] if wait else None,
        )
    )
