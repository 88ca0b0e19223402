"""`nbremote server init`: from a fresh box to a hardened one, waiting for the first key if need be.

With a key for every allowed user, init is check, harden, firewall, router,
invite. Without one (a fresh box: Debian's default sshd, password logins, no
key), harden would lock the user out, so init first takes one step that
needs no key, and waits:

1. The drop-in harden will later fill (`sshd_config.d/00-nbremote.conf`)
   gets a waiting version: passwords off, except for the waiting users from
   this machine's own private networks (`Match User … Address …`). It is
   validated with `sshd -t`, and `sshd -T` must show passwords on for a LAN
   address and off for any other; the originals are backed up (restore puts
   them back) and a guard process puts them back if init is killed.
2. A record in the user's home (`~/.local/state/nbremote/server-init.json`,
   written as the user, never as root) says init waits, with a token that
   the invite carries (`#wait=TOKEN`).
3. `nbremote add --invite` on the laptop logs in once with the password,
   installs its key only if the record has that token, then logs in with
   the key and writes `server-init-joined` next to the record: the key login
   this step waits for. It stays logged in, reading the record until it says
   `done` (with the final port and addresses) or `failed`; that session
   survives sshd's reload and the port move.
4. init then hardens (passwords off everywhere, the port moved), sets the
   firewall and asks the router, and writes the final record.

Ctrl-C or the end of the wait puts the files back, reloads sshd and removes
the record: the box is as it was before init. Running init again starts over
at the wait, or, once a key is there, goes straight to harden.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nbremote import invite as invites
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import checks, netinfo, rootcmd, steps, system
from nbremote.server.files import Transaction
from nbremote.server.guardpipe import Guard
from nbremote.server.sshd import (
    DROPIN_NAME,
    MARKER,
    Sshd,
    check_users,
    first,
    include_dir,
    with_include,
)

WAIT_S = 600.0
RECORD = "server-init.json"
JOINED = "server-init-joined"
RECORDS_WRITTEN = "init-records.json"  # in the state directory: whose homes hold a record, for restore
POLL_S = 0.5
BEAT_S = 5.0  # the waiting record is rewritten this often; a laptop takes one older than 20 s for dead

# Runs as the user (never as root) to read, write or remove one file of ~/.local/state/nbremote.
USER_FILE = r"""
import os, sys
action, name = sys.argv[1], sys.argv[2]
folder = os.path.join(os.path.expanduser("~"), ".local", "state", "nbremote")
path = os.path.join(folder, name)
if action == "write":
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w") as out:
        out.write(sys.stdin.read())
    os.replace(path + ".tmp", path)
elif action == "read":
    try:
        with open(path) as f:
            sys.stdout.write(f.read(65536))
    except FileNotFoundError:
        sys.exit(3)
else:
    for each in (path, path + ".tmp"):
        try:
            os.unlink(each)
        except FileNotFoundError:
            pass
"""


@dataclass(frozen=True)
class Options:
    port: int | None = None
    allow_users: tuple[str, ...] = ()
    expose: bool = True
    echo_urls: tuple[str, ...] = ()
    timeout: float = 3.0
    wait_s: float = WAIT_S


@dataclass
class InitResult:
    invite: str
    port: int
    hosts: list[str]
    waited_for: list[str] = field(default_factory=list)
    joined_from: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- pure parts


def private_networks(networks: list[str]) -> list[str]:
    """The networks a password may come from while init waits: private IPv4 ones and any
    IPv6 one on a link of this machine; loopback always. Never a public IPv4 network (a
    rented server's "LAN" is its provider's)."""
    allowed = []
    for text in networks:
        net = ipaddress.ip_network(text, strict=False)
        if net.version == 6 or net.is_private:
            allowed.append(str(net))
    return allowed


def waiting_dropin(users: tuple[str, ...], networks: list[str]) -> str:
    """The drop-in while init waits: passwords for the waiting users from these networks only."""
    nets = ",".join(["127.0.0.0/8", "::1", *networks])
    return (
        "\n".join(
            [
                f"# Written by {MARKER} (`nbremote server init`) while it waits for the first key login of "
                f"{', '.join(users)}:",
                "# a password only from this machine's own networks. `nbremote server restore` removes it.",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                f"Match User {','.join(users)} Address {nets}",
                "\tPasswordAuthentication yes",
            ]
        )
        + "\n"
    )


def outside_address(networks: list[str]) -> str:
    """An address in none of the networks, to ask `sshd -T` what a WAN client gets."""
    for candidate in ("198.51.100.7", "203.0.113.9", "192.0.2.33"):
        if not any(ipaddress.ip_address(candidate) in ipaddress.ip_network(n, strict=False) for n in networks):
            return candidate
    raise AssertionError("every documentation network is local")


# ---------------------------------------------------------------- the user's own files


class UserFiles:
    """One user's ~/.local/state/nbremote, read and written as that user."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.info = pwd.getpwnam(user)

    def _run(self, action: str, name: str, data: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-I", "-c", USER_FILE, action, name],
            input=data or "",
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
            user=self.info.pw_uid,
            group=self.info.pw_gid,
            extra_groups=[],
            env={"HOME": self.info.pw_dir, "PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        )

    def write(self, name: str, doc: dict) -> None:
        done = self._run("write", name, json.dumps(doc))
        if done.returncode != 0:
            raise NbremoteError(
                f"cannot write ~{self.user}/.local/state/nbremote/{name} as {self.user}",
                details=done.stderr.strip().splitlines()[-3:],
                hint=f"check that {self.info.pw_dir} exists and belongs to {self.user}",
            )

    def read(self, name: str) -> dict | None:
        done = self._run("read", name)
        if done.returncode != 0:
            return None
        try:
            doc = json.loads(done.stdout)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def remove(self, name: str) -> None:
        self._run("remove", name)


def _remember_records(state: Path, users: list[str]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    path = state / RECORDS_WRITTEN
    known = set(json.loads(path.read_text())) if path.is_file() else set()
    path.write_text(json.dumps(sorted(known | set(users))))


def forget_records(state: Path) -> list[str]:
    """Remove the records init left in users' homes (for `server restore`); what was removed."""
    path = state / RECORDS_WRITTEN
    if not path.is_file():
        return []
    removed = []
    for user in json.loads(path.read_text()):
        try:
            files = UserFiles(user)
        except KeyError:
            continue
        files.remove(RECORD)
        files.remove(JOINED)
        removed.append(f"~{user}/.local/state/nbremote/{RECORD}")
    path.unlink()
    return removed


# ---------------------------------------------------------------- init


def init(
    console: Console,
    confirm: steps.Confirm,
    options: Options,
    *,
    show_invite: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> InitResult:
    """The whole of `server init`; show_invite(line) is called while it waits for a laptop."""
    if not system.is_root():
        raise NbremoteError("init needs root", hint=f"run it with sudo: `{rootcmd.command('server', 'init')}`")
    if options.allow_users:
        check_users(options.allow_users)
    sshd = Sshd()
    sshd.require_installed()
    if sshd.pid() is None:
        raise NbremoteError(
            "sshd is not running: init changes nothing without it",
            hint="start it first (`sudo systemctl start ssh`, or `sudo service ssh start`)",
        )
    users = options.allow_users or _default_users()
    check_users(users)
    rows = steps.collect_checks(min(options.timeout, 2.0))
    counts = checks.summary(rows)
    console.note(f"check: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail; fixing what init can")
    current = steps.ssh_ports(sshd, True)
    port = options.port if options.port is not None else (22222 if current == {22} else min(current))
    host_key = steps.host_key_line(sshd.etc_ssh / "ssh_host_ed25519_key.pub")

    without_key = [u for u in users if sshd.authorized_keys(u)[0] is None]
    waiting: Waiting | None = None
    joined: dict[str, str] = {}
    if without_key:
        waiting = Waiting(console, sshd, tuple(without_key), clock=clock)
        waiting.open(confirm, wait_s=options.wait_s)
        try:
            for user in without_key:
                show_invite(invite_line(user, host_key, min(current), wan=None, wait=waiting.token))
            joined = waiting.wait(options.wait_s)
        except BaseException:
            waiting.close()
            raise
    try:
        hosts = _finish(console, confirm, sshd, options, port, users)
    except BaseException as exc:
        if waiting is not None:
            waiting.failed(exc)
        raise
    line = invite_line(users[0], host_key, port, wan=hosts.get("wan"), dns_name=steps.known_dns_name())
    addresses = list(invites.parse(line).hosts)
    if waiting is not None:
        waiting.done(port, addresses, invites.parse(line).fingerprint)
    return InitResult(invite=line, port=port, hosts=addresses, waited_for=list(without_key), joined_from=joined)


def invite_line(
    user: str, host_key: str, port: int, *, wan: str | None, wait: str | None = None, dns_name: str | None = None
) -> str:
    """The invite init prints: this machine's addresses, and the relay when `server relay` keeps a
    tunnel to one (a box behind carrier-grade NAT is reached through it from elsewhere)."""
    return invites.render(
        steps.build_invite(
            user=user,
            lan=netinfo.lan_addresses(),
            wan=wan,
            extra=[],
            port=port,
            host_key_line=host_key,
            wait=wait,
            relay=steps.known_relay(),
            dns_name=dns_name,
        )
    )


def _default_users() -> tuple[str, ...]:
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != "root":
        return (sudo_user,)
    raise NbremoteError(
        "name the user who may log in over ssh",
        hint=f"e.g. `{rootcmd.command('server', 'init', '--allow-user', 'alice')}`",
        exit_code=ExitCode.USAGE,
    )


def _finish(
    console: Console, confirm: steps.Confirm, sshd: Sshd, options: Options, port: int, users: tuple[str, ...]
) -> dict:
    """harden, firewall, router, WAN address: what needs a key. Returns {"wan": address or None}."""
    plan = sshd.plan(port=port, allow_users=users)
    if plan.already_done:
        console.done(f"sshd already hardened (port {port})")
    else:
        console.note(f"sshd      {plan.summary()}")
        confirm("Apply these sshd changes?")
        steps.apply_harden(console, sshd, plan)
    steps.run_firewall(console, confirm, remove=False, dry_run=False, port=port)
    wan = None
    if options.expose:
        console.note(f"router    forward WAN {port} → this machine's {port} (UPnP)")
        confirm("Ask the router?")
        doc = steps.run_expose(console, external_port=None, lease=0, igd=None, timeout=options.timeout, port=port)
        wan = doc.get("wan_address")
    if wan is None:
        try:
            # Asked already when exposing: a second search would only wait the timeout again.
            wan = steps.find_wan(console, options.echo_urls, options.timeout, ask_router=not options.expose).address
        except NbremoteError as exc:
            console.warn(f"{exc.message}; the invite lists the LAN addresses only")
    return {"wan": wan}


class Waiting:
    """The step that needs no key: LAN-only passwords for the users, a record, the wait."""

    def __init__(
        self, console: Console, sshd: Sshd, users: tuple[str, ...], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.console, self.sshd, self.users, self.clock = console, sshd, users, clock
        self.token = secrets.token_hex(6)
        self.tx = Transaction()
        self.had_backup = sshd.backup.exists()
        self.guard: Guard | None = None
        self.files = {u: UserFiles(u) for u in users}
        self.port = 22
        self.open_sshd = False

    def plan(self) -> tuple[list[tuple[Path, bytes]], list[str]]:
        """The files to write and the networks passwords may come from; touches nothing."""
        networks = private_networks(netinfo.lan_networks())
        if not networks:
            raise NbremoteError(
                "this machine is on no private network: init will not take a password from the internet",
                details=[f"its networks: {', '.join(netinfo.lan_networks()) or 'none'}"],
                hint=f"add your public key to ~{self.users[0]}/.ssh/authorized_keys by hand "
                "(e.g. from the provider's console), then run init again",
            )
        main_old = self.sshd.config.read_bytes()
        writes = []
        directory, on_top = include_dir(main_old.decode(errors="replace"), self.sshd.etc_ssh)
        if directory is None:
            directory = self.sshd.etc_ssh / "sshd_config.d"
            writes.append((self.sshd.config, with_include(main_old.decode(), directory).encode()))
        elif not on_top:
            raise NbremoteError(
                f"{self.sshd.config} has settings before its Include of {directory}: they would win over ours",
                hint=f"move the `Include {directory}/*.conf` line to the top of {self.sshd.config}, "
                "then run init again",
            )
        writes.append((directory / DROPIN_NAME, waiting_dropin(self.users, networks).encode()))
        return writes, networks

    def open(self, confirm: steps.Confirm, *, wait_s: float) -> None:
        writes, networks = self.plan()
        broken = self.sshd.validate()
        if broken:
            raise NbremoteError(
                "the current sshd config is already broken (`sshd -t` fails): refusing to touch it",
                details=broken.splitlines(),
                hint=f"fix {self.sshd.config} first; `sshd -t` shows the error",
            )
        before = self.sshd.effective()
        self.port = int(first(before, "port", "22"))
        names = ", ".join(self.users)
        self.console.note(
            f"{names} {'has' if len(self.users) == 1 else 'have'} no key yet: until "
            f"{'its' if len(self.users) == 1 else 'their'} first key login (at most "
            f"{wait_s / 60:g} min), sshd takes {'a password' if len(self.users) == 1 else 'passwords'} "
            f"for {names} only from {', '.join(networks)}, and from no other address"
        )
        confirm("Accept those passwords from the LAN while init waits?")
        _ = self.sshd.service  # resolved from the config in force, before we change it
        self.guard = Guard.start()
        try:
            for path, _ in writes:
                self.tx.remember(path)
            self.guard.expect(
                self.sshd.etc_ssh,
                list(self.tx.originals.values()),
                backup=None if self.had_backup else self.sshd.backup.directory,
            )
            self.sshd.backup.save(list(self.tx.originals.values()), "nbremote server init (waiting)")
            for path, data in writes:
                path.parent.mkdir(mode=0o755, exist_ok=True)
                self.tx.write(path, data, mode=0o644 if self.tx.originals[path].content is None else None)
            self._validate(before, networks)
            self.console.done("sshd config for the wait validated and backed up")
            self.open_sshd = True
            self.sshd._reload(self.port)
            for files in self.files.values():
                self._record(files, "waiting")
                files.remove(JOINED)
            _remember_records(steps.state_dir(), list(self.users))
        except BaseException:
            self.close()
            raise
        self.console.done(f"sshd reloaded: {names} may log in with a password from the LAN until then")

    def _validate(self, before: dict[str, list[str]], networks: list[str]) -> None:
        problem = self.sshd.validate()
        if problem:
            raise NbremoteError(
                "sshd rejects the config for the wait (nothing was reloaded)", details=problem.splitlines()
            )
        after = self.sshd.effective()
        changed = sorted(
            k
            for k in set(before) | set(after)
            if before.get(k) != after.get(k) and k not in ("passwordauthentication", "kbdinteractiveauthentication")
        )
        lan = str(next(ipaddress.ip_network(networks[0], strict=False).hosts()))
        user = self.users[0]
        inside = first(self.sshd.effective(user, lan), "passwordauthentication")
        outside = first(self.sshd.effective(user, outside_address(networks)), "passwordauthentication")
        if changed or inside != "yes" or outside != "no":
            raise NbremoteError(
                "sshd does not read the config for the wait as written (nothing was reloaded)",
                details=[
                    f"settings that changed too: {', '.join(changed)}"
                    if changed
                    else f"password login for {user}: {inside} from {lan}, {outside} from elsewhere"
                ],
                hint=f"another file under {self.sshd.etc_ssh} overrides it",
            )

    def wait(self, wait_s: float) -> dict[str, str]:
        """Until every user's first key login: user -> the address it came from."""
        started = self.clock()
        deadline = started + wait_s
        self.console.note(
            f"waiting up to {wait_s / 60:g} min for the first key login of {', '.join(self.users)}; "
            "Ctrl-C stops and puts sshd back as it was"
        )
        joined: dict[str, str] = {}
        beat = started
        try:
            while True:
                for user in self.users:
                    if user in joined:
                        continue
                    mark = self.files[user].read(JOINED)
                    if mark and mark.get("token") == self.token and self.sshd.authorized_keys(user)[0]:
                        joined[user] = str(mark.get("from") or "?")
                        self.console.end_status()
                        self.console.done(f"first key login of {user} (from {joined[user]})", self.clock() - started)
                if len(joined) == len(self.users):
                    break
                left = deadline - self.clock()
                if left <= 0:
                    raise NbremoteError(
                        f"no key login of {', '.join(u for u in self.users if u not in joined)} within "
                        f"{wait_s:g} s: stopped waiting; sshd is as it was before init",
                        hint=f"run `{rootcmd.command('server', 'init')}` again (with a longer --wait if need be) and "
                        "`nbremote add NAME --invite LINE` on the laptop with the new line it prints",
                    )
                if self.clock() - beat >= BEAT_S:
                    beat = self.clock()
                    for user in self.users:
                        if user not in joined:
                            self._record(self.files[user], "waiting")
                waiting_for = ", ".join(u for u in self.users if u not in joined)
                self.console.status(
                    f"… waiting for the first key login of {waiting_for} "
                    f"({int(left) // 60}:{int(left) % 60:02d} left; Ctrl-C stops)"
                )
                time.sleep(min(POLL_S, max(left, 0.01)))
        except KeyboardInterrupt:
            self.console.end_status()
            raise NbremoteError(
                "stopped waiting (Ctrl-C): sshd is as it was before init",
                hint=f"run `{rootcmd.command('server', 'init')}` again to start over",
                exit_code=ExitCode.INTERRUPTED,
            ) from None
        for files in self.files.values():
            self._record(files, "finishing")
        # From here harden's own guard covers sshd: killed during harden, the box is back at
        # the wait's config (the key is in; `restore` or init again go on from there).
        self._end_guard()
        return joined

    def _record(self, files: UserFiles, state: str, **more) -> None:
        # The beat: a laptop can tell a wait whose init was killed (SIGKILL leaves the record).
        files.write(RECORD, {"state": state, "token": self.token, "beat": time.time(), **more})

    def _end_guard(self) -> None:
        if self.guard is not None:
            self.guard.done()
            self.guard = None

    def close(self) -> None:
        """Back to before the wait: files, sshd, records; the guard has nothing left to do."""
        self.console.end_status()
        failures = self.tx.rollback()
        if not self.had_backup:
            self.sshd.backup.remove()
        if self.open_sshd:
            try:
                self.sshd._reload(self.port)
            except NbremoteError as exc:
                failures.append(exc.message)
        for files in self.files.values():
            files.remove(RECORD)
            files.remove(JOINED)
        self._end_guard()
        if failures:
            self.console.warn(
                f"putting sshd back failed: {'; '.join(failures)}; run `{rootcmd.command('server', 'restore')}`"
            )

    def failed(self, exc: BaseException) -> None:
        """A step after the wait failed: the laptop is told, and passwords are not left open on the LAN."""
        message = exc.message if isinstance(exc, NbremoteError) else "interrupted"
        for files in self.files.values():
            self._record(files, "failed", error=message)
        dropin = next((p for p in self.tx.originals if p.name == DROPIN_NAME), None)
        still_waiting = (
            dropin is not None
            and dropin.exists()
            and dropin.read_bytes().startswith(f"# Written by {MARKER} (`nbremote server init`) while".encode())
        )
        if still_waiting:
            self.tx.rollback()
            if not self.had_backup:
                self.sshd.backup.remove()
            try:
                self.sshd._reload(self.port)
            except NbremoteError as again:
                self.console.warn(
                    f"putting sshd back failed: {again.message}; run `{rootcmd.command('server', 'restore')}`"
                )

    def done(self, port: int, hosts: list[str], fingerprint: str) -> None:
        for files in self.files.values():
            self._record(files, "done", port=port, hosts=hosts, fingerprint=fingerprint)
