"""Asking the home router (UPnP IGD) to forward the ssh port, through miniupnpc.

Only the ssh port is ever mapped: Jupyter goes through the ssh tunnel. The
mapping has a lease, so a router that reboots or a server that goes away does
not keep a hole open forever; `expose --keep` renews it before it ends.
"""

from __future__ import annotations

import time
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
    on_error: Callable[[NbremoteError], None] | None = None,
) -> None:
    """Renew the mapping at half its lease, forever (or `rounds` times). A refused renewal
    raises, or with on_error is passed to it and tried again at the next period."""
    done = 0
    while rounds is None or done < rounds:
        sleep(max(1.0, lease / 2))
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
