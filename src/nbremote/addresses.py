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
_LAN_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8",
    "fc00::/7", "fe80::/10", "::1/128"))
_LAN_SUFFIXES = (".local", ".lan", ".home.arpa", ".internal")
_VPN_SUFFIXES = (".ts.net",)


@dataclass(frozen=True)
class Address:
    host: str  # a host name or an IP address, without brackets
    port: int | None = None  # None: the profile's port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_port(self, default: int) -> "Address":
        return self if self.port is not None else Address(self.host, default)


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
    """LAN, VPN or WAN: how `up` names the path it took."""
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
    return "WAN"
