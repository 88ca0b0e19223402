"""The server commands' steps, callable without the CLI: check, harden, firewall, expose, WAN, invite.

Each step shows its progress on the console and raises NbremoteError; none
reads stdin or exits. `confirm(question)` is the caller's: it returns when
the change may go ahead and raises when it may not (the CLI asks on a
terminal or takes --yes; a test passes its own).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from nbremote import invite as invites
from nbremote.addresses import parse_address, parse_relay
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import checks, ddns, firewall, netinfo, rootcmd, system, upnp
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


def run_expose(console: Console, *, external_port, lease, igd, timeout, port=None, router=None) -> dict:
    """router: one found already (`expose --keep` renews through it), else one is looked for."""
    port = sshd_port(port)
    external = external_port or port
    router = router or router_or_none(console, timeout, igd)
    if router is None:
        lan = netinfo.lan_addresses()
        console.warn("no UPnP router answered: forward the port in the router's page by hand")
        for line in upnp.manual_instructions(lan[0] if lan else "THIS_SERVER_LAN_IP", port, external):
            console.note(line)
        return {"mapped": False, "port": port, "external_port": external, "lan_addresses": lan}
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
    }


def unexpose(console: Console, *, external_port, igd, timeout) -> bool:
    """False when the router forwarded nothing on that port."""
    external = external_port or sshd_port()
    router = router_or_none(console, timeout, igd)
    if router is None:
        raise NbremoteError("no UPnP router answered", hint="remove the forwarding in the router's page")
    found = router.mapping(external)
    if not found:
        console.note(f"the router forwards nothing on WAN port {external}")
        return False
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
    dns_name: str | None = None,
) -> invites.Invite:
    """The invite from what this machine knows; LAN first, as the laptop should prefer it.
    wait: the token of an `init` waiting for this user's first key login;
    relay: the relay's USER@HOST[:PORT] and the tunnel's port there;
    dns_name: the name `server ddns` keeps pointed at the WAN address, first of the WAN
    addresses since it stays right when the address changes."""
    hosts: list[str] = []
    wan_side = ([dns_name] if dns_name else []) + ([wan] if wan else [])
    for host in [a for a in lan if ":" not in a] + wan_side + extra:
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
