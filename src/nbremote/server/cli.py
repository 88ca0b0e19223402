"""`nbremote server …`: run by the box's owner on the box. Parse, call, render."""
from __future__ import annotations

import datetime
import os
import socket
import sys
from pathlib import Path

import click

from nbremote import invite
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import checks, firewall, netinfo, system, upnp
from nbremote.server.sshd import Sshd

STATE_ENV = "NBREMOTE_STATE_DIR"


def state_dir() -> Path:
    """Where wan-ip and expose keep their records ($NBREMOTE_STATE_DIR overrides)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if system.is_root():
        return Path("/var/lib/nbremote")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "nbremote-server"


def confirm(console: Console, question: str, yes: bool) -> None:
    """Go on when --yes or the user says yes; stop cleanly otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise NbremoteError("not changing anything without confirmation",
                            hint="run it in a terminal to answer, or add --yes", exit_code=ExitCode.USAGE)
    if not click.confirm(question, default=False, err=True):
        raise NbremoteError("nothing changed (not confirmed)", exit_code=ExitCode.ERROR)


def render_checks(console: Console, rows: list[checks.Check]) -> None:
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = {"pass": "✓", "warn": "!", "fail": "✗"}.get(r.status, "·")
        console.result(f"{mark} {r.status:<10} {r.name:<{width}}  {r.detail}")
        if r.fix:
            console.result(f"  {'':<10} {'':<{width}}  fix: {r.fix}")


@click.group(name="server")
def server() -> None:
    """Set up this machine as an nbremote server (run these on the server).

    \b
    sudo nbremote server init       check, harden sshd, firewall, router, print the invite
    nbremote server check           what is safe and what is not, with the fix for each
    """


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds to wait for the router (UPnP) to answer.")
def check(as_json: bool, timeout: float) -> None:
    """Check sshd, tools, firewall, listeners and addresses; exit 1 on any failure.

    Without root, the checks that need it are listed as `needs root`.
    """
    console = Console.for_terminal(json_mode=as_json)
    rows = collect_checks(timeout)
    if as_json:
        console.emit_json({"checks": [r.to_json() for r in rows], "summary": checks.summary(rows)})
    else:
        render_checks(console, rows)
        counts = checks.summary(rows)
        console.result(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
                       + (f", {counts['needs root']} need root (run with sudo)" if counts["needs root"] else ""))
    if any(r.status == checks.FAIL for r in rows):
        sys.exit(ExitCode.ERROR)


def collect_checks(timeout: float) -> list[checks.Check]:
    root = system.is_root()
    sshd = Sshd()
    rows = checks.safe(lambda: checks.sshd_checks(sshd, root), "sshd")
    rows += checks.tool_checks()
    rows += checks.safe(lambda: firewall.check_rows(root, _ssh_ports(sshd, root)), "firewall")
    rows += checks.safe(lambda: checks.listener_checks(netinfo.listeners(), _ssh_ports(sshd, root), root),
                        "listeners")
    router = upnp.probe(timeout)
    wan = None
    if router and router.wan_address:
        wan = {"address": router.wan_address, "source": "router (UPnP)"}
    else:
        wan = netinfo.WanRecord(state_dir() / "wan-ip.json").last()
    mapping = router.mapping_for(_ssh_ports(sshd, root)) if router else None
    rows += checks.network_checks(netinfo.lan_addresses(), wan, mapping, router.name if router else None)
    return rows


def _ssh_ports(sshd: Sshd, root: bool) -> set[int]:
    if not root or sshd.binary is None:
        return {22}
    try:
        return {int(p) for p in sshd.effective().get("port", ["22"])}
    except NbremoteError:
        return {22}


@server.command()
@click.option("--port", type=int, help="Port for sshd [default: keep the current one].")
@click.option("--allow-user", "allow_users", multiple=True, metavar="USER",
              help="A user who may log in (repeat for more) [default: the current AllowUsers, else $SUDO_USER].")
@click.option("--dry-run", is_flag=True, help="Print the diff and change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def harden(port, allow_users, dry_run, yes, as_json) -> None:
    """Key-only logins, no root login, AllowUsers, modern algorithms; cannot lock you out.

    Writes one drop-in under the sshd config's Include directory, validates it
    with `sshd -t`, reloads sshd and proves a fresh key login on the new port
    works; on any failure the previous files go back and sshd is reloaded.
    `nbremote server restore` undoes it.
    """
    console = Console.for_terminal(json_mode=as_json)
    result = run_harden(console, port=port, allow_users=tuple(allow_users), dry_run=dry_run, yes=yes)
    if as_json and result is not None:
        console.emit_json(result)


def run_harden(console: Console, *, port, allow_users, dry_run, yes) -> dict | None:
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
    confirm(console, "Apply these changes?", yes)
    result = apply_harden(console, sshd, plan)
    return result


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

    result = sshd.apply(plan, step=console.done, before_reload=open_both, on_rollback=back_to_old,
                        firewall_port=old_port if moving else None, checkpoint=checkpoint)
    if moving:
        backend.apply(new_port)
        console.done(f"firewall now allows {new_port}/tcp instead of {old_port}/tcp")
    console.done(f"a fresh key login on port {result.port} works for {', '.join(result.verified)}",
                 result.seconds)
    return result.to_json()


def _our_firewall():
    try:
        backend = firewall.choose()
    except NbremoteError:
        return None, None
    return backend, backend.active_port()


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore(as_json) -> None:
    """Put back exactly the sshd files that `harden` changed, and reload sshd."""
    console = Console.for_terminal(json_mode=as_json)
    restored = Sshd().restore()
    if as_json:
        console.emit_json({"restored": restored})
    elif restored:
        console.done(f"restored {', '.join(restored)}; sshd reloaded")
    else:
        console.done("nothing to restore: harden has not changed this machine")


def sshd_port(port: int | None = None) -> int:
    """The port sshd serves (sshd -T needs root; 22 is assumed without it)."""
    if port is not None:
        return port
    ports = _ssh_ports(Sshd(), system.is_root())
    return min(ports)


@server.command(name="firewall")
@click.option("--remove", is_flag=True, help="Take out exactly what this command added.")
@click.option("--dry-run", is_flag=True, help="Print the rules and change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def firewall_command(remove, dry_run, yes, as_json) -> None:
    """Allow the ssh port, drop other new inbound traffic, keep established traffic.

    ufw when it is the active firewall; else nftables (own table, saved in
    /etc/nftables.conf); else iptables (own chain, saved in /etc/iptables/rules.v4
    and rules.v6). `--remove` takes out only what this added. Never opens a
    Jupyter port: Jupyter is reached through ssh.
    """
    console = Console.for_terminal(json_mode=as_json)
    outcome = run_firewall(console, remove=remove, dry_run=dry_run, yes=yes)
    if as_json and outcome is not None:
        console.emit_json(outcome.to_json())


def run_firewall(console: Console, *, remove: bool, dry_run: bool, yes: bool):
    if not system.is_root():
        raise NbremoteError("firewall needs root", hint="run it with sudo: `sudo nbremote server firewall`")
    backend = firewall.choose()
    if remove:
        outcome = backend.remove()
        (console.done if outcome.changed else console.note)(outcome.detail)
        return outcome
    port = sshd_port()
    if dry_run:
        console.result(backend.preview(port).rstrip("\n"))
        console.note(f"dry run ({backend.name}): nothing changed")
        console.note(firewall.WHY_NO_JUPYTER)
        return None
    if backend.active_port() != port:
        console.note(f"firewall  allow {port}/tcp, deny other inbound ({backend.name})")
        confirm(console, "Apply these changes?", yes)
    outcome = backend.apply(port)
    console.done(outcome.detail)
    console.note(firewall.WHY_NO_JUPYTER)
    return outcome


@server.command(name="wan-ip")
@click.option("--echo-url", "echo_urls", multiple=True, metavar="URL",
              help="An HTTP service that answers with the caller's address (repeat for more) "
                   f"[default: {', '.join(netinfo.DEFAULT_ECHO_SERVICES)}].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for the router and for each service.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def wan_ip(echo_urls, timeout, as_json) -> None:
    """This network's public address: from the router (UPnP), else from echo services.

    The answer is recorded with its time; a change since the last answer is reported.
    """
    console = Console.for_terminal(json_mode=as_json)
    answer = find_wan(console, echo_urls, timeout)
    if as_json:
        console.emit_json(answer.to_json())
        return
    console.result(answer.address)
    console.done(f"WAN address {answer.address} (from {answer.source})")
    if answer.changed:
        console.warn(f"changed: it was {answer.previous} at {_when(answer.previous_at)}; "
                     "laptops with the old address in their profile need the new one")


def _when(at: float | None) -> str:
    return "an unknown time" if not at else datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def find_wan(console: Console, echo_urls, timeout: float, router=None) -> netinfo.WanAnswer:
    record = netinfo.WanRecord(state_dir() / "wan-ip.json")
    if router is None:
        router = _router_or_none(console, timeout)
    if router and router.wan_address and netinfo.public_address(router.wan_address):
        return record.record(router.wan_address, "the router (UPnP)")
    if router and router.wan_address:
        console.warn(f"the router's own WAN address {router.wan_address} is not public "
                     "(carrier-grade NAT or a second router?): asking an echo service")
    services = echo_urls or tuple(u for u in os.environ.get("NBREMOTE_ECHO_URLS", "").split() if u) \
        or netinfo.DEFAULT_ECHO_SERVICES
    try:
        address, url, _ = netinfo.wan_from_echo(services, timeout)
    except LookupError as exc:
        raise NbremoteError("could not find the WAN address: no router answered UPnP and no echo service worked",
                            details=list(exc.args[0]), hint="check the network, or give a service with --echo-url")
    return record.record(address, url)


def _router_or_none(console: Console, timeout: float, url: str | None = None):
    try:
        return upnp.probe(timeout, url)
    except NbremoteError as exc:
        console.warn(f"{exc.message}: {exc.hint}")
        return None


@server.command()
@click.option("--external-port", type=click.IntRange(1, 65535), help="WAN port [default: the ssh port].")
@click.option("--lease", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seconds the router keeps the mapping; 0 until removed (with --keep: 3600).")
@click.option("--keep", is_flag=True, help="Stay running and renew the lease at half its time.")
@click.option("--igd", metavar="URL", help="The router's rootDesc.xml URL (skips discovery).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for the router.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def expose(external_port, lease, keep, igd, timeout, as_json) -> None:
    """Ask the router (UPnP IGD) to forward a WAN port to this machine's ssh port.

    Without a UPnP router, prints what to enter in the router's page.
    Only ssh is forwarded: Jupyter goes through the ssh tunnel.
    """
    console = Console.for_terminal(json_mode=as_json)
    if keep and lease == 0:
        lease = 3600
    doc = run_expose(console, external_port=external_port, lease=lease, igd=igd, timeout=timeout)
    if as_json:
        console.emit_json(doc)
    if keep and doc.get("mapped"):
        router = _router_or_none(console, timeout, igd)
        console.note(f"renewing every {lease // 2} s; Ctrl-C stops renewing (the mapping then ends "
                     f"within {lease} s)")
        upnp.keep(router, doc["external_port"], doc["port"], lease,
                  on_renew=lambda n: console.done(f"lease renewed ({n})"))


def run_expose(console: Console, *, external_port, lease, igd, timeout, port=None) -> dict:
    port = sshd_port(port)
    external = external_port or port
    router = _router_or_none(console, timeout, igd)
    if router is None:
        lan = netinfo.lan_addresses()
        console.warn("no UPnP router answered: forward the port in the router's page by hand")
        for line in upnp.manual_instructions(lan[0] if lan else "THIS_SERVER_LAN_IP", port, external):
            console.note(line)
        return {"mapped": False, "port": port, "external_port": external, "lan_addresses": lan}
    router.add(external, port, lease)
    found = router.mapping(external)
    if not found or found[0] != router.lan_address or found[1] != port:
        raise NbremoteError(f"the router accepted the mapping but does not list it for WAN port {external}",
                            details=[f"it lists {found}" if found else "it lists nothing"])
    wan = find_wan(console, (), timeout, router) if router.wan_address else None
    where = f"{wan.address}:{external}" if wan else f"WAN port {external}"
    console.done(f"router forwards {where} → {router.lan_address}:{port}"
                 + (f" (lease {lease} s)" if lease else " (until `nbremote server unexpose`)"))
    return {"mapped": True, "port": port, "external_port": external, "lan_address": router.lan_address,
            "wan_address": wan.address if wan else None, "lease": lease, "router": router.name}


@server.command()
@click.option("--external-port", type=click.IntRange(1, 65535), help="WAN port [default: the ssh port].")
@click.option("--igd", metavar="URL", help="The router's rootDesc.xml URL (skips discovery).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for the router.")
def unexpose(external_port, igd, timeout) -> None:
    """Remove the router's forwarding of the ssh port."""
    console = Console.for_terminal()
    external = external_port or sshd_port()
    router = _router_or_none(console, timeout, igd)
    if router is None:
        raise NbremoteError("no UPnP router answered", hint="remove the forwarding in the router's page")
    found = router.mapping(external)
    if not found:
        console.note(f"the router forwards nothing on WAN port {external}")
        return
    if found[0] != router.lan_address:
        raise NbremoteError(f"WAN port {external} is forwarded to {found[0]}, not to this machine: leaving it")
    if not router.remove(external):
        raise NbremoteError(f"the router refused to remove the forwarding of WAN port {external}")
    console.done(f"router no longer forwards WAN port {external}")


def host_key_fingerprint(pub: Path = Path("/etc/ssh/ssh_host_ed25519_key.pub")) -> str:
    done = system.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)])
    if done.returncode != 0:
        raise NbremoteError(f"cannot read the host key {pub}", details=done.stderr.splitlines())
    return done.stdout.split()[1]


@server.command()
@click.option("--port", type=int, help="Port for sshd [default: 22222 when it is on 22, else keep it].")
@click.option("--allow-user", "allow_users", multiple=True, metavar="USER",
              help="A user who may log in (repeat for more) [default: $SUDO_USER].")
@click.option("--expose/--no-expose", default=True, help="Ask the router to forward the ssh port (UPnP).")
@click.option("--echo-url", "echo_urls", multiple=True, metavar="URL", help="An echo service for the WAN address.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True,
              help="Seconds to wait for the router and for each echo service.")
@click.option("--yes", is_flag=True, help="Apply every change without asking.")
def init(port, allow_users, expose, echo_urls, timeout, yes) -> None:
    """Check, harden sshd, firewall, forward the port, then print the laptop's invite line.

    Each change is shown and confirmed (all at once with --yes).
    """
    console = Console.for_terminal()
    if not system.is_root():
        raise NbremoteError("init needs root", hint="run it with sudo: `sudo nbremote server init`")
    rows = collect_checks(min(timeout, 2.0))
    counts = checks.summary(rows)
    console.note(f"check: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail; fixing what init can")
    sshd = Sshd()
    if port is None:
        current = _ssh_ports(sshd, True)
        port = 22222 if current == {22} else min(current)
    plan = sshd.plan(port=port, allow_users=tuple(allow_users))
    if plan.already_done:
        console.done(f"sshd already hardened (port {port})")
    else:
        console.note(f"sshd      {plan.summary()}")
        confirm(console, "Apply these sshd changes?", yes)
        apply_harden(console, sshd, plan)
    run_firewall(console, remove=False, dry_run=False, yes=yes)
    wan = None
    if expose:
        console.note(f"router    forward WAN {port} → this machine's {port} (UPnP)")
        confirm(console, "Ask the router?", yes)
        doc = run_expose(console, external_port=None, lease=0, igd=None, timeout=timeout, port=port)
        wan = doc.get("wan_address")
    if wan is None:
        try:
            wan = find_wan(console, echo_urls, timeout).address
        except NbremoteError as exc:
            console.warn(f"{exc.message}; the invite lists the LAN addresses only")
    hosts = [a for a in netinfo.lan_addresses() if ":" not in a] + ([wan] if wan else [])
    line = invite.render(invite.Invite(user=plan.hardening.allow_users[0], hosts=tuple(hosts), port=port,
                                       fingerprint=host_key_fingerprint(sshd.etc_ssh / "ssh_host_ed25519_key.pub")))
    console.note("On your laptop:")
    console.result(f"  nbremote add {socket.gethostname()} --invite {line}")


# Its own module (issue #3, host profiles); imported last because it uses this module's helpers.
from nbremote.server.invite_cmd import invite as _invite  # noqa: E402

server.add_command(_invite)
