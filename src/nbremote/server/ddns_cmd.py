"""`nbremote server ddns`: the command around server/ddns.py. Parse, call, render."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from nbremote.console import Console
from nbremote.errors import NbremoteError
from nbremote.server import ddns, rootcmd, steps, system, upnp


@click.command(name="ddns")
@click.argument("name", required=False)
@click.option("--server", "server_text", metavar="ADDR[:PORT]", help="The DNS server to update (primary for the zone).")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False),
    help="The TSIG key file, as `tsig-keygen -a hmac-sha256 NAME` writes it; mode 0600, owned by root (or you).",
)
@click.option("--zone", metavar="ZONE", help="The zone the name is in [default: from the DNS server's SOA].")
@click.option(
    "--ttl",
    type=click.IntRange(1, 86400),
    default=ddns.DEFAULT_TTL,
    show_default=True,
    help="Seconds resolvers may keep the address.",
)
@click.option("--echo-url", "echo_urls", multiple=True, metavar="URL", help="An echo service for the WAN address.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the router, each echo service and the DNS server.",
)
@click.option("--force", is_flag=True, help="Send the update even when the last one sent this address.")
@click.option("--keep", is_flag=True, help="Stay in the foreground and check every --period.")
@click.option(
    "--period",
    type=click.FloatRange(min=1),
    default=ddns.DEFAULT_PERIOD,
    show_default=True,
    help="Seconds between checks (with --keep or --install-timer).",
)
@click.option(
    "--install-timer", is_flag=True, help="Check now, then install a systemd timer that checks every --period."
)
@click.option("--remove-timer", is_flag=True, help="Stop and remove the systemd timer --install-timer installed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ddns_command(
    name,
    server_text,
    key_path,
    zone,
    ttl,
    echo_urls,
    timeout,
    force,
    keep,
    period,
    install_timer,
    remove_timer,
    as_json,
) -> None:
    """Keep NAME pointed at this network's WAN address (RFC 2136 updates signed with TSIG).

    Finds the WAN address as `server wan-ip` does (the router, else echo
    services) and updates the name's A record (AAAA for an IPv6 address) only
    when it differs from the last address sent; `server invite` then offers
    the name first among the WAN addresses. One check by default; --keep
    checks every --period in the foreground; --install-timer has systemd do
    it (at boot and every --period). The DNS server must be primary for the
    zone and grant the key the name (BIND: `update-policy { grant KEY name
    NAME. A AAAA; };`).
    """
    console = Console.for_terminal(json_mode=as_json)
    if remove_timer:
        removed = ddns.remove_timer()
        if as_json:
            console.emit_json({"removed": [str(p) for p in removed]})
        elif removed:
            console.done(f"timer stopped; removed {', '.join(str(p) for p in removed)}")
        else:
            console.done("no timer installed: nothing to remove")
        return
    if not name or not server_text or not key_path:
        raise click.UsageError("give NAME, --server ADDR[:PORT] and --key FILE (or --remove-timer alone)")
    if keep and install_timer:
        raise click.UsageError("--keep and --install-timer both keep checking: choose one")
    if install_timer and not system.is_root():
        raise NbremoteError(
            "installing the timer needs root",
            hint=f"run it with sudo: `{rootcmd.command('server', 'ddns', '...', '--install-timer')}`",
        )
    if install_timer:
        ddns.require_systemd()  # before the first check: a timer that cannot be installed changes nothing
    checked_name = ddns.check_name(name)
    plan = ddns.Plan(
        name=checked_name,
        server=ddns.parse_server(server_text),
        key=ddns.read_key(Path(key_path)),
        zone=ddns.check_zone(checked_name, zone) if zone else None,
        ttl=ttl,
        timeout=timeout,
    )
    record = ddns.DdnsRecord(steps.state_dir() / ddns.RECORD)

    found: list[upnp.Router] = []  # the router the first check found: later checks ask it directly

    def wan() -> tuple[str, str]:
        router = _ask_again(found[0]) if found else None
        if router is None:
            router = steps.router_or_none(console, timeout)
            found[:] = [router] if router else []
        answer = steps.find_wan(console, echo_urls, timeout, router, ask_router=False)
        return answer.address, answer.source

    outcome = ddns.check_once(plan, record, wan, force=force)
    if as_json:
        console.emit_json(outcome.to_json())
    else:
        _render(console, plan, outcome)
    if install_timer:
        argv = rootcmd.running_program() + ["server", "ddns", plan.name, "--server", str(plan.server)]
        argv += ["--key", str(Path(key_path).absolute()), "--ttl", str(ttl), "--timeout", f"{timeout:g}"]
        argv += ["--zone", plan.zone] if plan.zone else []
        for url in echo_urls:
            argv += ["--echo-url", url]
        state = os.environ.get(steps.STATE_ENV)
        files = ddns.unit_files(argv, name=plan.name, period=period, state_dir=Path(state) if state else None)
        written = ddns.install_timer(files)
        console.done(f"systemd checks it at boot and every {period:g} s ({', '.join(str(p) for p in written)})")
        return
    if keep:
        console.note(f"checking every {period:g} s; Ctrl-C stops")
        ddns.keep(
            plan,
            record,
            wan,
            period=period,
            on_outcome=lambda o: _render(console, plan, o) if o.updated else None,
            on_error=lambda e: console.warn(f"{e.message}; trying again in {period:g} s"),
        )


def _ask_again(router: upnp.Router) -> upnp.Router | None:
    """The router's WAN address now, without discovery (SSDP waits its whole delay every time)."""
    try:
        address = router.client.externalipaddress() or None
    except Exception:
        return None
    return dataclasses.replace(router, wan_address=address)


def _render(console: Console, plan: ddns.Plan, outcome: ddns.Outcome) -> None:
    if not outcome.updated:
        console.done(f"{outcome.name} already points at {outcome.address} (the last update sent it)", outcome.seconds)
        return
    was = f"was {outcome.previous}; " if outcome.previous else ""
    console.done(
        f"{outcome.name} → {outcome.address} ({was}zone {outcome.zone}, DNS server {plan.server}, "
        f"WAN address from {outcome.source})",
        outcome.seconds,
    )
