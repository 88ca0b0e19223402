"""The server commands' steps, callable without the CLI: check, harden, firewall, expose, WAN, invite.

Each step shows its progress on the console and raises NbremoteError; none
reads stdin or exits. `confirm(question)` is the caller's: it returns when
the change may go ahead and raises when it may not (the CLI asks on a
terminal or takes --yes; a test passes its own).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from nbremote import invite as invites
from nbremote.addresses import parse_address, parse_relay
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import checks, ddns, firewall, netinfo, rootcmd, system, upnp
from nbremote.server.files import atomic_write
from nbremote.server.relay import RelayRecord
from nbremote.server.sshd import Sshd

STATE_ENV = "NBREMOTE_STATE_DIR"
HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key.pub")

Confirm = Callable[[str], None]


def state_dir() -> Path:
    """Where wan-ip, expose and init keep their records ($NBREMOTE_STATE_DIR overrides)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if system.is_root():
        return Path("/var/lib/nbremote")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "nbremote-server"


def collect_checks(timeout: float) -> list[checks.Check]:
    root = system.is_root()
    sshd = Sshd()
    rows = checks.safe(lambda: checks.sshd_checks(sshd, root), "sshd")
    rows += checks.tool_checks()
    rows += checks.safe(lambda: firewall.check_rows(root, ssh_ports(sshd, root)), "firewall")
    rows += checks.safe(lambda: checks.listener_checks(netinfo.listeners(), ssh_ports(sshd, root), root), "listeners")
    router = upnp.probe(timeout)
    wan = None
    if router and router.wan_address:
        wan = {"address": router.wan_address, "source": "router (UPnP)"}
    else:
        wan = netinfo.WanRecord(state_dir() / "wan-ip.json").last()
    mapping = router.mapping_for(ssh_ports(sshd, root)) if router else None
    rows += checks.network_checks(netinfo.lan_addresses(), wan, mapping, router.name if router else None)
    rows += checks.safe(lambda: ipv6_checks(root, ssh_ports(sshd, root), timeout), "ipv6")
    if router and router.wan_address:
        nat = netinfo.nat_in_front(router.wan_address, netinfo.WanRecord(state_dir() / "wan-ip.json").last())
        rows.append(
            checks.Check(
                "reachable from the internet",
                checks.WARN if nat else checks.PASS,
                nat or f"the router's WAN address {router.wan_address} is public",
                netinfo.RELAY_FIX if nat else None,
            )
        )
    return rows


def ipv6_checks(root: bool, ports: set[int], timeout: float) -> list[checks.Check]:
    """Where this machine has a global IPv6 address: the address, whether its firewall lets ssh
    in over IPv6, and whether the router's IPv6 firewall has the pinhole `expose` opened."""
    found = netinfo.global_ipv6()
    if not found:
        return []
    rows = [checks.Check("ipv6 address", checks.PASS, f"{address} ({interface})") for address, interface in found]
    rows.append(firewall.ipv6_row(root, ports))
    record = PinholeRecord(state_dir() / "pinholes.json")
    return rows + [pinhole_row(address, interface, ports, record, timeout) for address, interface in found]


def pinhole_row(address: str, interface: str, ports: set[int], record: PinholeRecord, timeout: float) -> checks.Check:
    """The router's pinhole to [address]:ssh, asked without changing it (GetPinholePackets)."""
    name = "ipv6 pinhole"
    port = min(ports)
    expose = rootcmd.command("server", "expose", "--keep")
    entry = record.all().get(address)
    try:
        if entry is None or int(entry.get("port", 0)) not in ports:
            service = upnp.find_firewall6(address, interface, timeout)
            if service is None:
                return checks.Check(
                    name,
                    checks.WARN,
                    f"the router offers no IPv6 pinholes: [{address}]:{port} answers from outside only if "
                    "the router's IPv6 firewall lets it in",
                    f"in the router's page (IPv6 firewall), allow TCP port {port} to {address}",
                )
            enabled, _ = service.status(timeout)
            if not enabled:
                return checks.Check(
                    name, checks.PASS, f"the router's IPv6 firewall is off: [{address}]:{port} comes in"
                )
            return checks.Check(
                name, checks.WARN, f"no pinhole to [{address}]:{port} in the router's IPv6 firewall", expose
            )
        record.firewall(address).packets(int(entry["id"]), timeout)
    except upnp.UpnpFault as fault:
        if fault.code not in upnp.PINHOLE_GONE:
            return checks.Check(name, checks.WARN, f"the router's answer about [{address}]:{port}: {fault}", expose)
        gone = f"pinhole {entry['id']}" if entry else "the pinhole"
        return checks.Check(
            name,
            checks.WARN,
            f"{gone} to [{address}]:{port} is gone (its lease ended, or the router restarted)",
            expose,
        )
    except upnp.ANSWER_ERRORS as exc:
        return checks.Check(name, checks.WARN, f"the router did not answer about [{address}]:{port} ({exc})", expose)
    return checks.Check(name, checks.PASS, f"pinhole {entry['id']} lets in [{address}]:{entry['port']}")


def ssh_ports(sshd: Sshd, root: bool) -> set[int]:
    if not root or sshd.binary is None:
        return {22}
    try:
        return {int(p) for p in sshd.effective().get("port", ["22"])}
    except NbremoteError:
        return {22}


def sshd_port(port: int | None = None) -> int:
    """The port sshd serves (sshd -T needs root; 22 is assumed without it)."""
    if port is not None:
        return port
    return min(ssh_ports(Sshd(), system.is_root()))


def run_harden(console: Console, confirm: Confirm, *, port, allow_users, dry_run) -> dict | None:
    sshd = Sshd()
    plan = sshd.plan(port=port, allow_users=allow_users)
    if plan.already_done:
        result = sshd.apply(plan)
        console.done(f"already hardened (port {result.port}, AllowUsers {' '.join(result.users)})")
        return result.to_json()
    if dry_run:
        console.result(plan.diff().rstrip("\n"))
        console.note("dry run: nothing changed")
        return {"dry_run": True, "diff": plan.diff()}
    console.note(f"sshd   {plan.summary()}")
    confirm("Apply these changes?")
    return apply_harden(console, sshd, plan)


def apply_harden(console: Console, sshd: Sshd, plan, *, checkpoint=lambda _: None) -> dict:
    """Harden; when our firewall is active, it lets the new port in before sshd moves there.
    checkpoint: see Sshd.apply."""
    new_port = plan.hardening.port
    backend, old_port = _our_firewall()
    moving = backend is not None and old_port is not None and old_port != new_port

    def open_both() -> None:
        if moving:
            backend.apply(new_port, also=(old_port,))

    def back_to_old() -> None:
        if moving:
            backend.apply(old_port)

    result = sshd.apply(
        plan,
        step=console.done,
        before_reload=open_both,
        on_rollback=back_to_old,
        firewall_port=old_port if moving else None,
        checkpoint=checkpoint,
    )
    if moving:
        backend.apply(new_port)
        console.done(f"firewall now allows {new_port}/tcp instead of {old_port}/tcp")
    console.done(f"a fresh key login on port {result.port} works for {', '.join(result.verified)}", result.seconds)
    return result.to_json()


def _our_firewall():
    try:
        backend = firewall.choose()
    except NbremoteError:
        return None, None
    return backend, backend.active_port()


def run_firewall(console: Console, confirm: Confirm, *, remove: bool, dry_run: bool, port: int | None = None):
    if not system.is_root():
        raise NbremoteError("firewall needs root", hint=f"run it with sudo: `{rootcmd.command('server', 'firewall')}`")
    backend = firewall.choose()
    if remove:
        outcome = backend.remove()
        (console.done if outcome.changed else console.note)(outcome.detail)
        return outcome
    port = sshd_port(port)
    if dry_run:
        console.result(backend.preview(port).rstrip("\n"))
        console.note(f"dry run ({backend.name}): nothing changed")
        console.note(firewall.WHY_NO_JUPYTER)
        return None
    if backend.active_port() != port:
        console.note(f"firewall  allow {port}/tcp, deny other inbound ({backend.name})")
        confirm("Apply these changes?")
    outcome = backend.apply(port)
    console.done(outcome.detail)
    console.note(firewall.WHY_NO_JUPYTER)
    return outcome


def find_wan(console: Console, echo_urls, timeout: float, router=None, *, ask_router: bool = True) -> netinfo.WanAnswer:
    record = netinfo.WanRecord(state_dir() / "wan-ip.json")
    if router is None and ask_router:
        router = router_or_none(console, timeout)
    if router and router.wan_address and netinfo.public_address(router.wan_address):
        return record.record(router.wan_address, "the router (UPnP)")
    if router and router.wan_address:
        console.warn(
            f"the router's own WAN address {router.wan_address} is not public "
            "(carrier-grade NAT or a second router?): asking an echo service; no port forward "
            "can reach this machine, a relay can: `nbremote server relay USER@HOST`"
        )
    services = (
        echo_urls
        or tuple(u for u in os.environ.get("NBREMOTE_ECHO_URLS", "").split() if u)
        or netinfo.DEFAULT_ECHO_SERVICES
    )
    try:
        address, url, _ = netinfo.wan_from_echo(services, timeout)
    except LookupError as exc:
        raise NbremoteError(
            "could not find the WAN address: no router answered UPnP and no echo service worked",
            details=list(exc.args[0]),
            hint="check the network, or give a service with --echo-url",
        ) from None
    return record.record(address, url)


def record_router_wan(console: Console, router) -> None:
    """The router's WAN address as it answers now, recorded (`expose --keep` asks at each renewal):
    every laptop's next connection then takes a changed one into its profile."""
    try:
        address = router.client.externalipaddress() or None
    except Exception:  # miniupnpc raises plain Exception for a router that does not answer
        return
    if address is None or not netinfo.public_address(address):
        return
    answer = netinfo.WanRecord(state_dir() / "wan-ip.json").record(address, "the router (UPnP)")
    if answer.changed:
        console.warn(
            f"the WAN address changed: {answer.previous} → {answer.address}; "
            "laptops take the new one on their next connection that works (at home, over the LAN)"
        )


def router_or_none(console: Console, timeout: float, url: str | None = None):
    try:
        return upnp.probe(timeout, url)
    except NbremoteError as exc:
        console.warn(f"{exc.message}: {exc.hint}")
        return None


def run_expose(console: Console, *, external_port, lease, igd, timeout, port=None, router=None, keep=False) -> dict:
    """router: one found already (`expose --keep` renews through it), else one is looked for."""
    port = sshd_port(port)
    external = external_port or port
    pinholes = expose_ipv6(console, port, lease, timeout, kept=keep)
    router = router or router_or_none(console, timeout, igd)
    if router is None:
        lan = netinfo.lan_addresses()
        console.warn("no UPnP router answered: forward the port in the router's page by hand")
        for line in upnp.manual_instructions(lan[0] if lan else "THIS_SERVER_LAN_IP", port, external):
            console.note(line)
        return {"mapped": False, "port": port, "external_port": external, "lan_addresses": lan, "pinholes": pinholes}
    router.add(external, port, lease)
    found = router.mapping(external)
    if not found or found[0] != router.lan_address or found[1] != port:
        raise NbremoteError(
            f"the router accepted the mapping but does not list it for WAN port {external}",
            details=[f"it lists {found}" if found else "it lists nothing"],
        )
    wan = find_wan(console, (), timeout, router) if router.wan_address else None
    where = f"{wan.address}:{external}" if wan else f"WAN port {external}"
    console.done(
        f"router forwards {where} → {router.lan_address}:{port}"
        + (f" (lease {lease} s)" if lease else " (until `nbremote server unexpose`)")
    )
    return {
        "mapped": True,
        "port": port,
        "external_port": external,
        "lan_address": router.lan_address,
        "wan_address": wan.address if wan else None,
        "lease": lease,
        "router": router.name,
        "pinholes": pinholes,
    }


def pinhole_lease(lease: int) -> int:
    """A pinhole always has a lease (IGD v2: 1 to 86400 s); 0, "until removed", is the longest."""
    return min(lease, upnp.PINHOLE_LEASE_MAX) if lease else upnp.PINHOLE_LEASE_MAX


def expose_ipv6(console: Console, port: int, lease: int, timeout: float, *, kept: bool = False) -> list[dict]:
    """An IPv6 pinhole to sshd for each global IPv6 address of this machine, where the router
    offers them. A router that offers none, or refuses, changes nothing: it is said, with what
    to do, and the IPv4 forward still goes ahead. kept: `expose --keep` renews them; else
    each ends with its lease (a day at most), and the note says what renews it."""
    opened = []
    record = PinholeRecord(state_dir() / "pinholes.json")
    for address, interface in netinfo.global_ipv6():
        entry: dict = {"address": address, "port": port, "opened": False}
        opened.append(entry)
        firewall = upnp.find_firewall6(address, interface, timeout)
        if firewall is None:
            entry["reason"] = "the router offers no IPv6 pinholes"
            console.warn(
                f"the router offers no IPv6 pinholes (no UPnP IGD v2 firewall control answered on {interface}): "
                f"from outside, [{address}]:{port} answers only if the router's IPv6 firewall lets it in; "
                f"in the router's page (IPv6 firewall), allow TCP port {port} to {address}"
            )
            continue
        try:
            enabled, allowed = firewall.status(timeout)
            if not enabled:
                entry["reason"] = "the router's IPv6 firewall is off"
                console.note(f"the router's IPv6 firewall is off: [{address}]:{port} is reachable as it is")
                continue
            if not allowed:
                raise upnp.UpnpFault(703, "InboundPinholeNotAllowed")
            unique_id = firewall.add(port, pinhole_lease(lease), timeout)
        except upnp.UpnpFault as fault:
            said, fix = upnp.pinhole_refusal(address, port, fault)
            entry["reason"] = said
            console.warn(f"{said}: {fix}")
            continue
        except upnp.ANSWER_ERRORS as exc:
            entry["reason"] = f"the router's answer: {exc}"
            console.warn(f"could not open an IPv6 pinhole to [{address}]:{port} ({exc})")
            continue
        entry.update(opened=True, id=unique_id, lease=pinhole_lease(lease))
        record.add(address, port, unique_id, firewall.control_url, interface)
        console.done(
            f"router's IPv6 firewall lets in [{address}]:{port} (pinhole {unique_id}, lease {entry['lease']} s)"
        )
    leases = [entry["lease"] for entry in opened if entry["opened"]]
    if leases and not kept:
        # Unlike an IPv4 mapping, a pinhole cannot be asked for until removed (IGD v2).
        console.note(
            f"the router closes the IPv6 pinhole after {min(leases)} s: `{rootcmd.command('server', 'expose', '--keep')}` "
            "renews it (keep it running: a systemd unit, tmux)"
        )
    return opened


def renew_pinholes(console: Console, pinholes: list[dict], timeout: float) -> None:
    """`expose --keep`: each pinhole's lease renewed (UpdatePinhole), or the pinhole opened
    again where the router no longer has it (its lease ended, the router restarted). A router
    that refuses or does not answer is said, and asked again at the next period."""
    record = PinholeRecord(state_dir() / "pinholes.json")
    for entry in pinholes:
        if not entry.get("opened"):
            continue
        address, port = entry["address"], entry["port"]
        try:
            firewall = record.firewall(address)
            try:
                firewall.update(int(entry["id"]), entry["lease"], timeout)
            except upnp.UpnpFault as fault:
                if fault.code not in upnp.PINHOLE_GONE:
                    raise
                entry["id"] = firewall.add(port, entry["lease"], timeout)
                record.add(address, port, entry["id"], firewall.control_url, firewall.interface)
                console.warn(f"the router had dropped the IPv6 pinhole to [{address}]:{port}: opened again")
        except upnp.UpnpFault as fault:
            console.warn(f"{pinhole_renewal_failed(address, port, entry['lease'])} ({fault})")
        except upnp.ANSWER_ERRORS as exc:
            console.warn(f"{pinhole_renewal_failed(address, port, entry['lease'])} (no answer: {exc})")


def pinhole_renewal_failed(address: str, port: int, lease: int) -> str:
    return f"the IPv6 pinhole to [{address}]:{port} was not renewed: it ends within {lease} s unless the next try works"


def keep_pinholes(console: Console, pinholes: list[dict], timeout: float) -> None:
    """`expose --keep` with pinholes but no IPv4 mapping to renew beside them (no UPnP for
    IPv4, or a forward set by hand): the pinholes alone, at half their lease, until Ctrl-C."""
    lease = min(entry["lease"] for entry in pinholes if entry.get("opened"))
    while True:
        time.sleep(max(1.0, lease / 2))
        renew_pinholes(console, pinholes, timeout)


class PinholeRecord:
    """The pinholes `expose` opened, by address: the router's id is what `unexpose` needs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> dict[str, dict]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def firewall(self, address: str) -> upnp.Firewall6:
        """The router's service that opened the pinhole to `address`, asked from it again."""
        entry = self.all()[address]
        return upnp.Firewall6(str(entry["control_url"]), address, str(entry.get("interface", "")))

    def add(self, address: str, port: int, unique_id: int, control_url: str, interface: str) -> None:
        found = self.all()
        found[address] = {"port": port, "id": unique_id, "control_url": control_url, "interface": interface}
        self._write(found)

    def forget(self, address: str) -> None:
        found = self.all()
        found.pop(address, None)
        if found:
            self._write(found)
        else:
            self.path.unlink(missing_ok=True)

    def _write(self, found: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(found, indent=1).encode(), mode=0o644)


def unexpose_ipv6(console: Console, timeout: float) -> bool:
    """Close the pinholes `expose` opened; False when it had opened none."""
    record = PinholeRecord(state_dir() / "pinholes.json")
    closed = False
    for address, entry in record.all().items():
        try:
            record.firewall(address).delete(int(entry["id"]), timeout)
        except upnp.UpnpFault as fault:
            if fault.code not in upnp.PINHOLE_GONE:  # already gone (its lease ended): nothing left to close
                raise NbremoteError(
                    f"the router refused to close the IPv6 pinhole to [{address}]:{entry['port']}",
                    details=[str(fault)],
                    hint="close it in the router's page (IPv6 firewall)",
                ) from None
        except upnp.ANSWER_ERRORS as exc:
            raise NbremoteError(
                f"could not ask the router to close the IPv6 pinhole to [{address}]:{entry['port']} ({exc})",
                hint="is this machine on its home network? run unexpose again there",
            ) from None
        record.forget(address)
        console.done(f"router's IPv6 firewall no longer lets in [{address}]:{entry['port']}")
        closed = True
    return closed


def unexpose(console: Console, *, external_port, igd, timeout) -> bool:
    """False when the router forwarded nothing on that port (and expose had opened no pinhole)."""
    external = external_port or sshd_port()
    closed = unexpose_ipv6(console, timeout)
    router = router_or_none(console, timeout, igd)
    if router is None:
        if closed:
            return True
        raise NbremoteError("no UPnP router answered", hint="remove the forwarding in the router's page")
    found = router.mapping(external)
    if not found:
        console.note(f"the router forwards nothing on WAN port {external}")
        return closed
    if found[0] != router.lan_address:
        raise NbremoteError(f"WAN port {external} is forwarded to {found[0]}, not to this machine: leaving it")
    if not router.remove(external):
        raise NbremoteError(f"the router refused to remove the forwarding of WAN port {external}")
    console.done(f"router no longer forwards WAN port {external}")
    return True


def host_key_line(path: Path = HOST_KEY) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise NbremoteError(
            f"cannot read {path}: {exc.strerror}",
            hint="on Debian/Ubuntu, `sudo dpkg-reconfigure openssh-server` makes the host keys",
        ) from None


def known_wan() -> str | None:
    return (netinfo.WanRecord(state_dir() / "wan-ip.json").last() or {}).get("address")


def known_dns_name() -> str | None:
    """The name `server ddns` keeps pointed at this network, once it has updated it."""
    return ddns.known_name(state_dir())


def known_relay() -> tuple[str, int] | None:
    """The relay and its tunnel port, when `server relay` has built a tunnel to one."""
    return RelayRecord(state_dir() / "relay.json").last()


def build_invite(
    *,
    user: str,
    lan: list[str],
    wan: str | None,
    extra: list[str],
    port: int,
    host_key_line: str,
    wait: str | None = None,
    relay: tuple[str, int] | None = None,
    ipv6: list[str] | tuple[str, ...] = (),
    dns_name: str | None = None,
) -> invites.Invite:
    """The invite from what this machine knows; LAN first, as the laptop should prefer it,
    then its global IPv6 addresses (reached without a forward, through the router's pinhole),
    then the WAN address and the extra ones.
    wait: the token of an `init` waiting for this user's first key login;
    relay: the relay's USER@HOST[:PORT] and the tunnel's port there;
    dns_name: the name `server ddns` keeps pointed at the WAN address, first of the WAN
    addresses since it stays right when the address changes."""
    hosts: list[str] = []
    wan_side = ([dns_name] if dns_name else []) + ([wan] if wan else [])
    for host in [a for a in lan if ":" not in a] + list(ipv6) + wan_side + extra:
        if parse_address(f"[{host}]" if ":" in host else host).host not in hosts:
            hosts.append(host)
    fields = host_key_line.split()
    if len(fields) < 2 or fields[0] != "ssh-ed25519":
        raise NbremoteError(
            "the ed25519 host key is unreadable",
            exit_code=ExitCode.ERROR,
            hint="on Debian/Ubuntu, `sudo dpkg-reconfigure openssh-server` makes the host keys",
        )
    return invites.check(
        invites.Invite(
            user=user,
            hosts=tuple(hosts),
            port=port,
            fingerprint=invites.fingerprint(fields[1]),
            wait=wait,
            relay=parse_relay(relay[0]) if relay else None,
            tunnel_port=relay[1] if relay else None,
        )
    )
