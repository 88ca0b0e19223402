"""Asking the home router (UPnP IGD) to forward the ssh port, through miniupnpc,
and to open an IPv6 pinhole to it (IGD v2 WANIPv6FirewallControl).

Only the ssh port is ever mapped: Jupyter goes through the ssh tunnel. The
mapping has a lease, so a router that reboots or a server that goes away does
not keep a hole open forever; `expose --keep` renews it before it ends.

miniupnpc's Python module has no pinhole calls (2.3.3, nor its source since),
so the three pinhole actions are plain SOAP over http.client. The router lets
a control point open a pinhole only to the address the request comes from, so
every request is sent from the very IPv6 address the pinhole is for.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import time
import urllib.parse
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape
from dataclasses import dataclass
from typing import Any, Callable

from nbremote.errors import NbremoteError

DESCRIPTION = "nbremote ssh"


def _library() -> Any:
    try:
        import miniupnpc
    except ImportError:
        raise NbremoteError(
            "the UPnP client library is not installed", hint="pip install 'nbremote[server]' (it adds miniupnpc)"
        ) from None
    return miniupnpc


@dataclass
class Router:
    name: str  # the IGD's description URL
    lan_address: str  # this machine's address as the router sees it
    wan_address: str | None
    client: Any

    def mapping(self, external: int) -> tuple[str, int, str, int] | None:
        """(internal host, internal port, description, lease seconds left) of a TCP mapping."""
        found = self.client.getspecificportmapping(external, "TCP")
        if not found:
            return None
        host, port, description, _enabled, lease = found
        return host, int(port), description, int(lease)

    def mapping_for(self, ports: set[int]) -> str | None:
        """A mapping to this machine's ssh port, as text, if the router has one."""
        for index in range(256):
            try:
                entry = self.client.getgenericportmapping(index)
            except Exception:
                break
            if not entry:
                break
            external, protocol, (host, port), description, *_ = entry
            if protocol == "TCP" and host == self.lan_address and int(port) in ports:
                return f"WAN {self.wan_address}:{external} → {host}:{port} ({description})"
        return None

    def add(self, external: int, internal: int, lease: int) -> None:
        try:
            ok = self.client.addportmapping(external, "TCP", self.lan_address, internal, DESCRIPTION, "", lease)
        except Exception as exc:
            raise NbremoteError(
                f"the router refused to forward WAN port {external} to {self.lan_address}:{internal}",
                details=[str(exc)],
                hint="the port may be taken or not allowed by the router's UPnP rules; "
                "try another with --external-port, or forward it in the router's page",
            ) from None
        if not ok:
            raise NbremoteError(f"the router refused to forward WAN port {external}")

    def remove(self, external: int) -> bool:
        try:
            return bool(self.client.deleteportmapping(external, "TCP"))
        except Exception:
            return False


# urn:...:InternetGatewayDevice:1, WANIPConnection:1, WANPPPConnection:1, upnp:rootdevice
SEARCHED_TYPES = 4


def probe(timeout: float, url: str | None = None) -> Router | None:
    """The router if one answers UPnP within timeout (or at url), else None."""
    lib = _library()
    client = lib.UPnP()
    # miniupnpc searches for its device types one after another, each waiting the whole delay
    # when nothing answers: the delay is split so that a silent network costs timeout, not
    # four times it. Below 1 s miniupnpc rounds it up (a router may wait up to 1 s to answer).
    client.discoverdelay = max(1000, int(timeout * 1000 / SEARCHED_TYPES))
    try:
        if url:
            name = client.selectigd(url)
        else:
            if client.discover() == 0:
                return None
            name = client.selectigd()
    except Exception:
        return None
    try:
        wan = client.externalipaddress() or None
    except Exception:
        wan = None
    return Router(str(name), client.lanaddr, wan, client)


def keep(
    router: Router,
    external: int,
    internal: int,
    lease: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
    on_renew: Callable[[int], None] = lambda _: None,
    also: Callable[[], None] = lambda: None,
    on_error: Callable[[NbremoteError], None] | None = None,
) -> None:
    """Renew the mapping at half its lease, forever (or `rounds` times); `also` renews the rest
    (the IPv6 pinholes, whose leases are the same or shorter), whether or not the mapping's
    renewal went through: a pinhole is a way in of its own. A refused renewal raises, or
    with on_error is passed to it and tried again at the next period."""
    done = 0
    while rounds is None or done < rounds:
        sleep(max(1.0, lease / 2))
        also()
        try:
            router.add(external, internal, lease)
        except NbremoteError as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        done += 1
        on_renew(done)


def manual_instructions(lan_address: str, port: int, external: int) -> list[str]:
    """What to type into a router's port-forwarding page when it has no UPnP."""
    return [
        "in the router's page (Port forwarding / Virtual server / NAT), add:",
        f"  protocol TCP · external port {external} · internal IP {lan_address} · internal port {port}",
        "forward nothing else: Jupyter goes through the ssh tunnel and needs no open port",
    ]


# ---------------------------------------------------------------- IPv6 pinholes

FIREWALL6 = "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1"
_SSDP6 = ("ff02::c", 1900)  # SSDP's link-local multicast group
_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_DEVICE = "{urn:schemas-upnp-org:device-1-0}"
# IGD v2's 1..86400: a pinhole always has a lease, a day at most.
PINHOLE_LEASE_MAX = 86400
# What the router's error codes mean for someone opening ssh to this machine.
_PINHOLE_ERRORS = {
    606: "not authorized: routers open pinholes only to ports 1024 and up, and only for the asking address",
    701: "the router has no room for another pinhole",
    702: "the router's IPv6 firewall is off: nothing to open, IPv6 already comes in",
    703: "the router's settings allow no inbound pinholes",
    704: "no such pinhole",
}
# IGD v2 says 704 NoSuchEntry for a UniqueID the router no longer has (the lease ran out, it
# restarted); miniupnpd 2.3.1 says 402 Invalid Args for Update/Delete/GetPinholePackets then
# (seen in the lab). Our arguments are always well-formed numbers, so either means gone.
PINHOLE_GONE = (704, 402)


# A router that does not answer, or answers what is not SOAP.
ANSWER_ERRORS = (OSError, ValueError, KeyError, http.client.HTTPException, ET.ParseError)


class UpnpFault(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"UPnP error {code}: {description}")
        self.code = code


@dataclass
class Firewall6:
    """The router's WANIPv6FirewallControl service, asked from `source` (this machine's address)."""

    control_url: str
    source: str
    interface: str = ""  # where a link-local control URL is

    def _call(self, action: str, args: dict[str, str], timeout: float) -> dict[str, str]:
        fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args.items())
        body = (
            f'<?xml version="1.0"?><s:Envelope xmlns:s="{_SOAP}" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{FIREWALL6}">{fields}</u:{action}></s:Body></s:Envelope>'
        ).encode()
        url = urllib.parse.urlsplit(self.control_url)
        conn = _connection(url, self.interface, timeout, source=self.source)
        try:
            conn.request(
                "POST",
                url.path or "/",
                body,
                {"Content-Type": 'text/xml; charset="utf-8"', "SOAPAction": f'"{FIREWALL6}#{action}"'},
            )
            reply = conn.getresponse()
            text = reply.read(65536)
        finally:
            conn.close()
        root = ET.fromstring(text)
        code = root.find(".//{urn:schemas-upnp-org:control-1-0}errorCode")
        if code is not None:
            said = root.find(".//{urn:schemas-upnp-org:control-1-0}errorDescription")
            raise UpnpFault(int((code.text or "0").strip()), (said.text or "") if said is not None else "")
        if reply.status != 200:
            raise UpnpFault(reply.status, f"HTTP {reply.status}")
        answer = root.find(f".//{{{FIREWALL6}}}{action}Response")
        return {child.tag.split("}")[-1]: (child.text or "") for child in (answer if answer is not None else [])}

    def status(self, timeout: float) -> tuple[bool, bool]:
        """(the router's IPv6 firewall is on, it takes inbound pinholes)."""
        got = self._call("GetFirewallStatus", {}, timeout)
        return _true(got.get("FirewallEnabled")), _true(got.get("InboundPinholeAllowed"))

    def add(self, port: int, lease: int, timeout: float) -> int:
        """A pinhole from anywhere to this machine's TCP `port`; its UniqueID. The same pinhole
        again only renews its lease and gives the same UniqueID (IGD v2 says so)."""
        got = self._call(
            "AddPinhole",
            {
                "RemoteHost": "",
                "RemotePort": "0",
                "InternalClient": self.source,
                "InternalPort": str(port),
                "Protocol": str(socket.IPPROTO_TCP),
                "LeaseTime": str(lease),
            },
            timeout,
        )
        return int(got["UniqueID"])

    def update(self, unique_id: int, lease: int, timeout: float) -> None:
        """A new lease for a pinhole, from now (IGD v2's renewal); a PINHOLE_GONE fault when it is gone."""
        self._call("UpdatePinhole", {"UniqueID": str(unique_id), "NewLeaseTime": str(lease)}, timeout)

    def packets(self, unique_id: int, timeout: float) -> int:
        """The packets a pinhole let in: asking changes nothing, and a PINHOLE_GONE fault says it is gone."""
        return int(self._call("GetPinholePackets", {"UniqueID": str(unique_id)}, timeout)["PinholePackets"])

    def delete(self, unique_id: int, timeout: float) -> None:
        self._call("DeletePinhole", {"UniqueID": str(unique_id)}, timeout)


def _true(value: str | None) -> bool:
    """A UPnP boolean: 1, true or yes."""
    return (value or "").strip().lower() in ("1", "true", "yes")


def pinhole_refusal(address: str, port: int, fault: UpnpFault) -> tuple[str, str]:
    """(what happened, what to do) when the router refuses a pinhole: `expose` warns and goes on."""
    reason = _PINHOLE_ERRORS.get(fault.code, str(fault))
    if fault.code == 606 and port < 1024:
        fix = "move sshd to a port of 1024 or more (`nbremote server harden --port 22222`), then expose again"
    else:
        fix = f"open TCP port {port} to {address} in the router's IPv6 firewall page"
    return f"the router refused an IPv6 pinhole to [{address}]:{port} ({reason})", fix


def _connection(
    url: urllib.parse.SplitResult, interface: str, timeout: float, source: str | None = None
) -> http.client.HTTPConnection:
    host = url.hostname or ""
    try:
        if ipaddress.ip_address(host).is_link_local:
            host = f"{host}%{interface}"  # a link-local address means nothing without its link
    except ValueError:
        pass
    return http.client.HTTPConnection(
        host, url.port or 80, timeout=timeout, source_address=(source, 0) if source else None
    )


def find_firewall6(address: str, interface: str, timeout: float) -> Firewall6 | None:
    """The router's WANIPv6FirewallControl, found by SSDP on `interface` (which holds `address`);
    None when no router there offers one (an IGD v1, or no UPnP). The first answer ends the
    wait; MX 1 asks routers to answer within a second."""
    search = (
        f'M-SEARCH * HTTP/1.1\r\nHOST: [ff02::c]:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: {FIREWALL6}\r\n\r\n'
    ).encode()
    locations: list[str] = []
    try:
        index = socket.if_nametoindex(interface)
        # Sent from the link-local address (the scope of ff02::c), so the answer comes back
        # link-local to link-local: what `server firewall` lets in.
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.settimeout(0.2)
            sock.sendto(search, (*_SSDP6, 0, index))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not locations:
                try:
                    data, _ = sock.recvfrom(4096)
                except socket.timeout:
                    continue
                for line in data.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "location" and value.strip().startswith("http://"):
                        locations.append(value.strip())
    except OSError:
        return None
    for location in locations:
        try:
            control = _control_url(location, interface, timeout)
        except ANSWER_ERRORS:
            continue
        if control:
            return Firewall6(control, address, interface)
    return None


def _control_url(location: str, interface: str, timeout: float) -> str | None:
    url = urllib.parse.urlsplit(location)
    conn = _connection(url, interface, timeout)
    try:
        conn.request("GET", url.path or "/")
        text = conn.getresponse().read(262144)
    finally:
        conn.close()
    root = ET.fromstring(text)
    base = root.findtext(f"{_DEVICE}URLBase") or location
    for service in root.iter(f"{_DEVICE}service"):
        if (service.findtext(f"{_DEVICE}serviceType") or "").strip() == FIREWALL6:
            return urllib.parse.urljoin(base, (service.findtext(f"{_DEVICE}controlURL") or "").strip())
    return None
