"""`nbremote server …`: run by the box's owner on the box. Parse, call, render.

The steps themselves are in steps.py and onboard.py, callable without this module.
"""

from __future__ import annotations

import datetime
import socket
import sys

import click

from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import checks, netinfo, onboard, relay_cmd, steps, upnp
from nbremote.server.ddns_cmd import ddns_command
from nbremote.server.invite_cmd import invite as invite_command
from nbremote.server.sshd import Sshd
from nbremote.verdicts import check_lines


def confirmer(yes: bool):
    """The steps' confirm(question): go on when --yes or the user says yes; stop cleanly otherwise."""

    def confirm(question: str) -> None:
        if yes:
            return
        if not sys.stdin.isatty():
            raise NbremoteError(
                "not changing anything without confirmation",
                hint="run it in a terminal to answer, or add --yes",
                exit_code=ExitCode.USAGE,
            )
        if not click.confirm(question, default=False, err=True):
            raise NbremoteError("nothing changed (not confirmed)", exit_code=ExitCode.ERROR)

    return confirm


def render_checks(console: Console, rows: list[checks.Check]) -> None:
    for line in check_lines(rows):
        console.result(line)


@click.group(name="server")
def server() -> None:
    """Set up this machine as an nbremote server (run these on the server).

    \b
    sudo nbremote server init       check, harden sshd, firewall, router, print the invite
    nbremote server check           what is safe and what is not, with the fix for each
    """


server.add_command(invite_command)
server.add_command(ddns_command)
server.add_command(relay_cmd.command(state_dir=steps.state_dir, sshd_port=steps.sshd_port))


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds to wait for the router (UPnP) to answer.",
)
def check(as_json: bool, timeout: float) -> None:
    """Check sshd, tools, firewall, listeners and addresses; exit 1 on any failure.

    Without root, the checks that need it are listed as `needs root`.
    """
    console = Console.for_terminal(json_mode=as_json)
    rows = steps.collect_checks(timeout)
    if as_json:
        console.emit_json({"checks": [r.to_json() for r in rows], "summary": checks.summary(rows)})
    else:
        render_checks(console, rows)
        counts = checks.summary(rows)
        console.result(
            f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail"
            + (f", {counts['needs root']} need root (run with sudo)" if counts["needs root"] else "")
        )
    if any(r.status == checks.FAIL for r in rows):
        sys.exit(ExitCode.ERROR)


@server.command()
@click.option("--port", type=int, help="Port for sshd [default: keep the current one].")
@click.option(
    "--allow-user",
    "allow_users",
    multiple=True,
    metavar="USER",
    help="A user who may log in (repeat for more) [default: the current AllowUsers, else $SUDO_USER].",
)
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
    result = steps.run_harden(console, confirmer(yes), port=port, allow_users=tuple(allow_users), dry_run=dry_run)
    if as_json and result is not None:
        console.emit_json(result)


@server.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def restore(as_json) -> None:
    """Put back exactly the sshd files that `harden` or `init` changed, and reload sshd."""
    console = Console.for_terminal(json_mode=as_json)
    restored = Sshd().restore()
    restored += onboard.forget_records(steps.state_dir())
    if as_json:
        console.emit_json({"restored": restored})
    elif restored:
        console.done(f"restored {', '.join(restored)}; sshd reloaded")
    else:
        console.done("nothing to restore: harden has not changed this machine")


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
    outcome = steps.run_firewall(console, confirmer(yes), remove=remove, dry_run=dry_run)
    if as_json and outcome is not None:
        console.emit_json(outcome.to_json())


@server.command(name="wan-ip")
@click.option(
    "--echo-url",
    "echo_urls",
    multiple=True,
    metavar="URL",
    help="An HTTP service that answers with the caller's address (repeat for more) "
    f"[default: {', '.join(netinfo.DEFAULT_ECHO_SERVICES)}].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the router and for each service.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def wan_ip(echo_urls, timeout, as_json) -> None:
    """This network's public address: from the router (UPnP), else from echo services.

    The answer is recorded with its time; a change since the last answer is reported.
    """
    console = Console.for_terminal(json_mode=as_json)
    answer = steps.find_wan(console, echo_urls, timeout)
    if as_json:
        console.emit_json(answer.to_json())
        return
    console.result(answer.address)
    console.done(f"WAN address {answer.address} (from {answer.source})")
    if answer.changed:
        console.warn(
            f"changed: it was {answer.previous} at {_when(answer.previous_at)}; "
            "laptops with the old address in their profile need the new one"
        )


def _when(at: float | None) -> str:
    return "an unknown time" if not at else datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


@server.command()
@click.option("--external-port", type=click.IntRange(1, 65535), help="WAN port [default: the ssh port].")
@click.option(
    "--lease",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seconds the router keeps the mapping; 0 until removed (with --keep: 3600).",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Stay running: renew the lease at half its time, and record the WAN address the router then gives.",
)
@click.option("--igd", metavar="URL", help="The router's rootDesc.xml URL (skips discovery).")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Seconds to wait for the router."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def expose(external_port, lease, keep, igd, timeout, as_json) -> None:
    """Ask the router (UPnP IGD) to forward a WAN port to this machine's ssh port.

    Where this machine has a global IPv6 address, also a pinhole in the router's
    IPv6 firewall to its ssh port (IGD v2; a lease of at most a day).
    Without a UPnP router, prints what to enter in the router's page.
    Only ssh is forwarded: Jupyter goes through the ssh tunnel.
    """
    console = Console.for_terminal(json_mode=as_json)
    if keep and lease == 0:
        lease = 3600
    # The router that took the mapping renews it: a second discovery could outlast a short lease.
    router = steps.router_or_none(console, timeout, igd) if keep else None
    doc = steps.run_expose(
        console, external_port=external_port, lease=lease, igd=igd, timeout=timeout, router=router, keep=keep
    )
    if as_json:
        console.emit_json(doc)
    if keep and not doc.get("mapped") and any(p["opened"] for p in doc["pinholes"]):
        console.note("renewing the IPv6 pinholes at half their lease; Ctrl-C stops renewing")
        steps.keep_pinholes(console, doc["pinholes"], timeout)
        return
    if keep and doc.get("mapped"):
        router = router or steps.router_or_none(console, timeout, igd)  # it answered run_expose's second look
        if router is None:
            console.warn(f"the router no longer answers UPnP: the mapping is not renewed and ends within {lease} s")
            return
        console.note(f"renewing every {lease // 2} s; Ctrl-C stops renewing (the mapping then ends within {lease} s)")

        def renewed(count: int) -> None:
            console.done(f"lease renewed ({count})")
            steps.record_router_wan(console, router)

        def failed(exc: NbremoteError) -> None:
            # A router between two WAN addresses (a PPPoE reconnect) refuses for a moment.
            console.warn(f"{exc.message}: trying again in {max(1, lease // 2)} s")

        upnp.keep(
            router,
            doc["external_port"],
            doc["port"],
            lease,
            on_renew=renewed,
            on_error=failed,
            also=lambda: steps.renew_pinholes(console, doc["pinholes"], timeout),
        )


@server.command()
@click.option("--external-port", type=click.IntRange(1, 65535), help="WAN port [default: the ssh port].")
@click.option("--igd", metavar="URL", help="The router's rootDesc.xml URL (skips discovery).")
@click.option(
    "--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Seconds to wait for the router."
)
def unexpose(external_port, igd, timeout) -> None:
    """Remove the router's forwarding of the ssh port, and the IPv6 pinholes expose opened."""
    steps.unexpose(Console.for_terminal(), external_port=external_port, igd=igd, timeout=timeout)


@server.command()
@click.option("--port", type=int, help="Port for sshd [default: 22222 when it is on 22, else keep it].")
@click.option(
    "--allow-user",
    "allow_users",
    multiple=True,
    metavar="USER",
    help="A user who may log in (repeat for more) [default: $SUDO_USER].",
)
@click.option("--expose/--no-expose", default=True, help="Ask the router to forward the ssh port (UPnP).")
@click.option("--echo-url", "echo_urls", multiple=True, metavar="URL", help="An echo service for the WAN address.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the router and for each echo service.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=1),
    default=onboard.WAIT_S,
    show_default=True,
    help="Seconds to wait for a user's first key login when the user has no key yet.",
)
@click.option("--yes", is_flag=True, help="Apply every change without asking.")
def init(port, allow_users, expose, echo_urls, timeout, wait_s, yes) -> None:
    """Check, harden sshd, firewall, forward the port, then print the laptop's invite line.

    When an allowed user has no key yet, init first accepts that user's
    password from this machine's own networks only (an sshd `Match Address`
    drop-in), prints the invite, and waits for the first key login
    (`nbremote add NAME --invite LINE` on the laptop makes and installs the
    key); only then does it turn passwords off and go on. Ctrl-C or the end
    of the wait puts sshd back as it was; running init again goes on from there.
    Each change is shown and confirmed (all at once with --yes).
    """
    console = Console.for_terminal()
    name = socket.gethostname()

    def show_invite(line: str) -> None:
        console.note("On your laptop:")
        console.result(f"  nbremote add {name} --invite {line}")

    done = onboard.init(
        console,
        confirmer(yes),
        onboard.Options(
            port=port,
            allow_users=tuple(allow_users),
            expose=expose,
            echo_urls=tuple(echo_urls),
            timeout=timeout,
            wait_s=wait_s,
        ),
        show_invite=show_invite,
    )
    show_invite(done.invite)
