"""Server addresses as a profile or an invite holds them: `HOST`, `HOST:PORT`, `[IPV6]:PORT`.

Pure functions: the profile file, `nbremote add --address` and the invite line
all validate with these, so a value refused in one place is refused in all.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from nbremote.errors import ExitCode, NbremoteError

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Tailscale and other overlay networks hand out addresses from the CGNAT range; Tailscale's
# IPv6 addresses come from its own ULA prefix, which must not be taken for a LAN's.
_VPN_NETS = tuple(ipaddress.ip_network(n) for n in ("100.64.0.0/10", "fd7a:115c:a1e0::/48"))
# Not ipaddress's is_private: that also counts the documentation ranges (203.0.113.0/24), which
# stand for WAN addresses in examples.
_LAN_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
_LAN_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal")
_VPN_SUFFIXES = (".ts.net",)


@dataclass(frozen=True)
class Address:
    host: str  # a host name or an IP address, without brackets
    port: int | None = None  # None: the profile's port
    via: Relay | None = None  # reached through this relay's loopback (host and port are on the relay)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = host if self.port is None else f"{host}:{self.port}"
        return text if self.via is None else f"{text} via {self.via}"

    def with_port(self, default: int) -> "Address":
        return self if self.port is not None else Address(self.host, default, self.via)


@dataclass(frozen=True)
class Relay:
    """A machine with a public address that the box keeps a reverse tunnel to: USER@HOST[:PORT]."""

    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + ("" if self.port == 22 else f":{self.port}")


_RELAY_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")


def parse_relay(text: str) -> Relay:
    """USER@HOST[:PORT] (HOST may be [IPv6]); the user is required: it is an account on the relay."""
    user, at, rest = text.partition("@")
    if not at or not _RELAY_USER.match(user):
        raise NbremoteError(
            f"relay {text!r} is not USER@HOST[:PORT]",
            hint="name your account on the relay, e.g. alice@vps.example.org:22",
            exit_code=ExitCode.USAGE,
        )
    address = parse_address(rest)
    return Relay(user, address.host, address.port or 22)


def check_port(value: object, what: str = "port") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise NbremoteError(f"{what} {value!r} is out of range (1-65535)", exit_code=ExitCode.USAGE)
    return value


def is_host(text: str) -> bool:
    """A DNS name (RFC 1123) or an IPv4/IPv6 address; nothing ssh could read as an option."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if not text or len(text) > 253 or text.startswith("-"):
        return False
    labels = text.rstrip(".").split(".")
    # An all-numeric last label is a mistyped IPv4 address (999.1.1.1), not a name.
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def parse_address(text: str) -> Address:
    bad = NbremoteError(
        f"{text!r} is not a host name or IP address",
        hint="give a name like gpubox.example.org, an address like 192.168.1.112, "
        "optionally with :PORT ([IPv6]:PORT for IPv6)",
        exit_code=ExitCode.USAGE,
    )
    host, port = text, None
    if text.startswith("["):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?", text)
        if not match:
            raise bad
        host, port = match.group(1), match.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif text.count(":") == 1:
        host, port = text.split(":")
        if not port.isdigit():
            raise bad
    elif ":" in text:
        try:
            ipaddress.IPv6Address(text)  # bare IPv6, no port
        except ValueError:
            raise bad from None
    if not is_host(host):
        raise bad
    return Address(host, check_port(int(port), f"port in {text!r}") if port is not None else None)


def kind(host: str) -> str:
    """LAN, VPN, WAN or IPv6: how `up` names the path it took (an Address with `via` is "relay").

    A global IPv6 address is IPv6, not WAN: it reaches the box itself, with no port forward."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if name.endswith(_VPN_SUFFIXES):
            return "VPN"
        return "LAN" if name.endswith(_LAN_SUFFIXES) or "." not in name else "WAN"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:192.168.1.112 is that LAN address
    if any(ip.version == net.version and ip in net for net in _VPN_NETS):
        return "VPN"
    if any(ip.version == net.version and ip in net for net in _LAN_NETS):
        return "LAN"
    return "IPv6" if ip.version == 6 else "WAN"


def public_ip(text: object) -> str | None:
    """text as an IP address the internet can route to this box, else None.

    What the server reports of its own public addresses goes through this: private,
    loopback, link-local, carrier-grade NAT, documentation, multicast and reserved
    addresses, host names and anything else are not a way in from elsewhere."""
    if not isinstance(text, str) or len(text) > 45:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if not ip.is_global or ip.is_multicast or (ip.version == 6 and ip.ipv4_mapped is not None):
        return None
    return str(ip)


def ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def refreshed(
    current: tuple[Address, ...], reported: list[tuple[str, str | None]]
) -> list[tuple[Address | None, Address]]:
    """(old, new) for each of a profile's addresses that the server's public addresses replace,
    and (None, new) for one they add.

    reported: (address, the one before it or None), each a public_ip. An address replaces
    the profile's one IP literal of its kind (WAN for IPv4, IPv6), keeping that entry's
    port (the router's external port); with several of that kind, only the one the server
    says it had before. Host names (a DNS name that follows the address), LAN, VPN and
    relay entries are never touched, nor is anything when the address is there already,
    or another the server reports of its kind (a box may have two global IPv6 addresses).
    A profile with no IPv6 entry gains the first global IPv6 address the server reports,
    after its LAN entries (the invite's order), on the port of its first LAN entry: IPv6
    reaches sshd itself, with no port forward, on the port it listens on at home."""
    hosts = [a.host for a in current]
    changes: list[tuple[Address | None, Address]] = []
    for address, previous in reported:
        if address in hosts:
            continue
        alike = [a for a, _ in reported if ip_version(a) == ip_version(address) and kind(a) == kind(address)]
        if any(a in hosts for a in alike):
            continue
        same = [
            i
            for i, a in enumerate(current)
            if a.via is None and ip_version(a.host) == ip_version(address) and kind(a.host) == kind(address)
        ]
        if len(same) > 1:
            same = [i for i in same if current[i].host == previous]
        if len(same) == 1 and hosts[same[0]] == current[same[0]].host:  # not replaced by an earlier report
            old = current[same[0]]
            hosts[same[0]] = address
            changes.append((old, Address(address, old.port)))
        elif not same and kind(address) == "IPv6":
            lan = next((a for a in current if a.via is None and kind(a.host) == "LAN"), None)
            hosts.append(address)
            changes.append((None, Address(address, lan.port if lan else None)))
    return changes


def added_at(current: list[Address]) -> int:
    """Where an address the server reports goes in a profile's list: after its LAN entries."""
    lan = [i for i, a in enumerate(current) if a.via is None and kind(a.host) == "LAN"]
    return lan[-1] + 1 if lan else 0


def applied(current: tuple[Address, ...], changes: list[tuple[Address | None, Address]]) -> tuple[Address, ...]:
    """The profile's addresses with refreshed's changes made, as hosts.toml gets them."""
    result = list(current)
    for old, new in changes:
        if old is None:
            result.insert(added_at(result), new)
        elif old in result:
            result[result.index(old)] = new
    return tuple(result)
