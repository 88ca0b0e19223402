"""What this machine looks like on the network: listeners, LAN and WAN addresses.

Listeners come from /proc/net/tcp{,6} (the kernel's own table, no `ss`
needed); which process owns a socket is only visible to root for other
users' processes, so `owner` may be None.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nbremote.server import system
from nbremote.server.files import atomic_write

# Plain-text "what is my IP" services, tried in order; each answers with the
# address it sees. Over HTTPS so that nobody on the path can lie about it.
DEFAULT_ECHO_SERVICES = (
    "https://api.ipify.org",
    "https://ifconfig.me/ip",
    "https://icanhazip.com",
)


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    inode: int
    pid: int | None = None
    process: str | None = None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified


def _decode_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc prints IPv6 as four host-order 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped or address)


def parse_proc_net_tcp(text: str) -> list[tuple[str, int, int]]:
    """(address, port, inode) of every LISTEN socket in a /proc/net/tcp* table."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "0A":
            continue
        hex_addr, hex_port = fields[1].split(":")
        found.append((_decode_address(hex_addr), int(hex_port, 16), int(fields[9])))
    return found


def _socket_owners() -> dict[int, tuple[int, str]]:
    owners: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            name = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), (int(entry), name))
    return owners


def listeners(*, owners: bool = True) -> list[Listener]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            found += parse_proc_net_tcp(Path(table).read_text())
        except OSError:
            continue
    by_inode = _socket_owners() if owners else {}
    result = []
    for address, port, inode in found:
        pid, name = by_inode.get(inode, (None, None))
        result.append(Listener(address, port, inode, pid, name))
    return result


def listener_inodes(port: int) -> set[int]:
    return {item.inode for item in listeners(owners=False) if item.port == port}


def _lan_interfaces() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    done = system.run(["ip", "-j", "addr", "show", "scope", "global"])
    if done.returncode != 0:
        return []
    found = []
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            if "local" not in info:
                continue  # `ip -j` lists `{}` for an interface with no address in the scope asked
            interface = ipaddress.ip_interface(f"{info['local']}/{info.get('prefixlen', 128)}")
            if not interface.ip.is_loopback and not interface.ip.is_link_local:
                found.append(interface)
    return sorted(found, key=lambda i: (i.version, i.ip))


def lan_addresses() -> list[str]:
    """Global-scope addresses of this machine's interfaces, IPv4 first."""
    return [str(i.ip) for i in _lan_interfaces()]


_GLOBAL_UNICAST6 = ipaddress.ip_network("2000::/3")


def global_ipv6() -> list[tuple[str, str]]:
    """(address, interface) of this machine's global IPv6 addresses, the ones the internet can
    reach (through the router's pinhole). Not the temporary ones: privacy extensions replace
    them within a day, and a laptop's profile would keep a dead one."""
    done = system.run(["ip", "-j", "-6", "addr", "show", "scope", "global"])
    if done.returncode != 0:
        return []
    found = []
    for link in json.loads(done.stdout or "[]"):
        for info in link.get("addr_info", []):
            if "local" not in info or info.get("temporary") or info.get("deprecated") or info.get("tentative"):
                continue
            if is_global_ipv6(info["local"]):
                found.append((info["local"], link.get("ifname", "")))
    return found


def is_global_ipv6(text: str) -> bool:
    """Global unicast (2000::/3): not link-local, not a ULA (fc00::/7), not mapped IPv4.
    The documentation range 2001:db8::/32 counts, as it stands for such addresses in examples."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.version == 6 and ip in _GLOBAL_UNICAST6


def lan_networks() -> list[str]:
    """The networks those addresses are on (CIDR), IPv4 first: where this machine's LAN is."""
    networks: list[str] = []
    for interface in _lan_interfaces():
        if str(interface.network) not in networks:
            networks.append(str(interface.network))
    return networks


# ---------------------------------------------------------------- WAN address


@dataclass(frozen=True)
class WanAnswer:
    address: str
    source: str  # "router (UPnP)" or the echo service's URL
    at: float  # time.time() when seen
    previous: str | None = None
    previous_at: float | None = None

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.previous != self.address

    def to_json(self) -> dict:
        return {
            "address": self.address,
            "source": self.source,
            "at": self.at,
            "previous": self.previous,
            "previous_at": self.previous_at,
            "changed": self.changed,
        }


def public_address(text: str) -> str | None:
    """The address in an echo service's answer, if it is a usable public one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return str(address) if address.is_global else None


def ask_echo_service(url: str, timeout: float, opener: Callable[..., object] = urllib.request.urlopen) -> str:
    with opener(url, timeout=timeout) as reply:  # type: ignore[attr-defined]
        body = reply.read(200).decode("ascii", errors="replace")
    address = public_address(body)
    if address is None:
        raise ValueError(f"answered {body.strip()[:40]!r}, not a public IP address")
    return address


def wan_from_echo(
    services: Sequence[str], timeout: float, opener: Callable[..., object] = urllib.request.urlopen
) -> tuple[str, str, list[str]]:
    """(address, service, failures of the services tried before it)."""
    failures: list[str] = []
    for url in services:
        try:
            return ask_echo_service(url, timeout, opener), url, failures
        except (OSError, ValueError, socket.timeout) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise LookupError(failures)


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def nat_in_front(router_wan: str | None, seen: dict | None) -> str | None:
    """Why no port forward on the router can reach this machine from the internet, if it cannot.

    router_wan: the router's own WAN address (UPnP); seen: the last `server wan-ip`
    record, whose address counts only when an echo service (a URL) saw it.
    """
    if router_wan is None:
        return None
    try:
        address = ipaddress.ip_address(router_wan)
    except ValueError:
        return None
    if address.version == 4 and address in _CGNAT:
        return f"the router's WAN address {router_wan} is in 100.64.0.0/10: the provider's carrier-grade NAT"
    if not address.is_global:
        return f"the router's WAN address {router_wan} is private: another router or the provider's NAT is in front"
    if (
        seen
        and str(seen.get("source", "")).startswith(("http://", "https://"))
        and seen.get("address")
        and seen["address"] != router_wan
    ):
        return (
            f"the router's WAN address is {router_wan} but the internet sees {seen['address']} "
            f"({seen['source']}): a NAT is in front of the router"
        )
    return None


RELAY_FIX = "nbremote server relay USER@HOST  (a machine of yours with a public address: a VPS, a login node)"


class WanRecord:
    """The last WAN address seen, with its time, so a change can be reported."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def record(self, address: str, source: str, now: float | None = None) -> WanAnswer:
        now = time.time() if now is None else now
        last = self.last() or {}
        answer = WanAnswer(address, source, now, last.get("address"), last.get("at"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(answer.to_json(), indent=1).encode(), mode=0o644)
        return answer
