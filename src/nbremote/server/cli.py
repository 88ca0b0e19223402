"""`nbremote server …`: run by the box's owner on the box. Parse, call, render."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

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
    result = sshd.apply(plan, step=console.done)
    console.done(f"a fresh key login on port {result.port} works for {', '.join(result.verified)}",
                 result.seconds)
    return result.to_json()


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


# Its own module (issue #3, host profiles); imported last because it uses this module's helpers.
from nbremote.server.invite_cmd import invite as _invite  # noqa: E402

server.add_command(_invite)
