"""add / remove / hosts / ssh: host profiles from the first key to the last path used.

`add` checks everything it was given before it writes anything: the name, the
addresses, the port, the invite, the profile file; then it reaches the server
(ssh-keyscan on every address at once), pins its host key (the invite's, or
the one shown on first use), installs the user's key over one password login
if key login does not work yet, and only then writes the profile, the pinned
key, the Host block and the Include line.
"""
from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from nbremote import invite as invites
from nbremote import paths, profiles, remote, sshfiles
from nbremote.addresses import Address, check_port, parse_address
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import Profile, UpDefaults
from nbremote.reach import Reached
from nbremote.ssh import Connection, Target, ssh_env


@dataclass(frozen=True)
class AddRequest:
    name: str
    addresses: tuple[str, ...] = ()
    user: str | None = None
    port: int | None = None
    key: str | None = None
    invite: str | None = None
    up: UpDefaults = UpDefaults()


@dataclass(frozen=True)
class AddResult:
    profile: Profile
    reached: Address
    fingerprint: str
    pinned_from: str  # "invite" or "first use"
    key: Path
    key_generated: bool
    key_installed: bool  # False: key login worked already
    include_backup: Path | None

    def to_json(self) -> dict:
        return {"name": self.profile.name, "addresses": [str(a) for a in self.profile.addresses],
                "user": self.profile.user, "port": self.profile.port, "reached": str(self.reached),
                "fingerprint": self.fingerprint, "pinned_from": self.pinned_from, "key": str(self.key),
                "key_generated": self.key_generated, "key_installed": self.key_installed}


def _usage(message: str, hint: str | None = None) -> NbremoteError:
    return NbremoteError(message, hint=hint, exit_code=ExitCode.USAGE)


def _checked_profile(req: AddRequest, existing: dict[str, Profile]) -> tuple[Profile, str | None]:
    """The profile to add and the invite's fingerprint, or a USAGE error; nothing touched."""
    name = profiles.check_name(req.name)
    if name in existing:
        raise _usage(f"a host profile {name!r} exists already",
                     hint=f"`nbremote remove {name}` first to set it up again")
    if sshfiles.collides(name):
        raise _usage(f"~/.ssh/config already has a `Host {name}`",
                     hint=f"choose another name, or use that entry directly: `nbremote up {name}`")
    fingerprint = None
    if req.invite is not None:
        if req.addresses or req.port is not None or req.user is not None:
            raise _usage("--invite gives the user, addresses and port: leave out --address, --user and --port")
        parsed = invites.parse(req.invite)
        addresses, user, port, fingerprint = tuple(parsed.addresses), parsed.user, parsed.port, parsed.fingerprint
    else:
        if not req.addresses:
            raise _usage(f"no address for {name}", hint="give --address (several, best first) or --invite")
        addresses = tuple(parse_address(a) for a in req.addresses)
        user = profiles.check_user(req.user) if req.user is not None else None
        port = check_port(req.port) if req.port is not None else 22
    key = None
    if req.key is not None:
        key = str(sshfiles.check_key(Path(req.key).expanduser().absolute()))
    return Profile(name=name, addresses=addresses, user=user, port=port, key=key, up=req.up), fingerprint


def _pin(profile: Profile, scans: list[sshfiles.Scan], fingerprint: str | None,
         confirm: Callable[[str], bool], console: Console) -> tuple[list[tuple[str, str]], str]:
    answered = [s for s in scans if s.keys]
    if fingerprint is not None:
        for scan in answered:
            matching = [k for k in scan.keys if invites.fingerprint(k[1]) == fingerprint]
            if not matching:
                raise NbremoteError(
                    f"the host key of {profile.name} at {scan.address} does not match the invite: refusing",
                    details=[f"expected {fingerprint} (from the invite)"]
                    + [f"received {invites.fingerprint(blob)} ({kind})" for kind, blob in scan.keys],
                    hint="if the server was reinstalled, ask its owner for a fresh invite "
                    "(`nbremote server invite` on the server); otherwise someone may be intercepting "
                    "the connection",
                    exit_code=ExitCode.HOST_KEY)
        return matching, "invite"
    kind, blob = answered[0].keys[0]
    shown = invites.fingerprint(blob)
    for scan in answered[1:]:
        if (kind, blob) not in scan.keys:
            raise NbremoteError(
                f"the addresses of {profile.name} are not the same server: refusing",
                details=[f"{answered[0].address}: {shown}"]
                + [f"{scan.address}: {invites.fingerprint(scan.keys[0][1])}"],
                hint="check the addresses, or use an invite from the server (`nbremote server invite`)",
                exit_code=ExitCode.HOST_KEY)
    if not confirm(f"{profile.name} at {answered[0].address} has the {kind} key {shown}. Trust it?"):
        raise NbremoteError("nothing changed (host key not trusted)",
                            hint="compare it with `nbremote server invite` on the server, "
                            "or add with --invite", exit_code=ExitCode.HOST_KEY)
    return [(kind, blob)], "first use"


def _login(profile: Profile, address: Address, known_hosts: Path, *, batch: bool, timeout: float,
           command: str, stdin: str | None = None) -> tuple[Connection, subprocess.CompletedProcess]:
    options = tuple((k, str(known_hosts) if k == "UserKnownHostsFile" else v)
                    for k, v in sshfiles.connection_options(profile, address))
    conn = Connection(Target(label=profile.name, destination=profile.name, options=options),
                      control_dir=paths.runtime_dir(), timeout=timeout, batch=batch, persist=False)
    done = subprocess.run(conn.command_argv(command), input=stdin, capture_output=True, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          timeout=None if not batch else timeout + 30, env=ssh_env())
    return conn, done


def _install_key(profile: Profile, address: Address, pins: list[tuple[str, str]], key: Path,
                 timeout: float, console: Console) -> bool:
    """True when the key had to be installed; an error when login with it still fails."""
    with tempfile.TemporaryDirectory(prefix="nbremote-add-") as tmp:
        known = Path(tmp) / "known_hosts"
        known.write_text(sshfiles.render_known_hosts("", profile.host_key_alias, pins))
        conn, done = _login(profile, address, known, batch=True, timeout=timeout, command="true")
        if done.returncode == 0:
            return False
        error = conn.failure(done.stderr)
        if error.exit_code != ExitCode.AUTH_FAILED:
            raise error
        public = Path(f"{key}.pub").read_text().strip()
        console.note(f"installing {key.name}.pub for {profile.user or 'you'} on {profile.name}: "
                     "log in once with the password")
        conn, done = _login(profile, address, known, batch=False, timeout=timeout,
                            command=sshfiles.install_command(), stdin=public + "\n")
        if done.returncode != 0:
            raise conn.failure(done.stderr) if done.returncode == 255 else NbremoteError(
                f"could not add the key to ~/.ssh/authorized_keys on {profile.name}",
                details=done.stderr.strip().splitlines()[-3:], exit_code=ExitCode.ERROR)
        conn, done = _login(profile, address, known, batch=True, timeout=timeout, command="true")
        if done.returncode != 0:
            raise NbremoteError(f"the key is installed on {profile.name} but logging in with it still fails",
                                details=done.stderr.strip().splitlines()[-3:],
                                hint="the server may not accept keys (PubkeyAuthentication), "
                                "or its home directory is writable by others (sshd's StrictModes)",
                                exit_code=ExitCode.AUTH_FAILED)
    return True


def add(req: AddRequest, console: Console, *, interactive: bool, confirm: Callable[[str], bool],
        timeout: float = 5.0) -> AddResult:
    started = time.monotonic()
    existing = profiles.load()
    profile, fingerprint = _checked_profile(req, existing)

    with console.progress(f"looking for {profile.name}"):
        scans = sshfiles.scan_all(profile.endpoints(), timeout)
    answered = [s for s in scans if s.keys]
    if not answered:
        raise NbremoteError(f"cannot reach {profile.name}",
                            details=["tried " + ", ".join(f"{s.address} ({s.error})" for s in scans)],
                            hint="check the address and that sshd runs there",
                            exit_code=ExitCode.UNREACHABLE)
    pins, pinned_from = _pin(profile, scans, fingerprint, confirm, console)
    shown = invites.fingerprint(pins[0][1])
    console.done(f"{profile.name} answers at {answered[0].address}; host key {shown} "
                 f"({'matches the invite' if pinned_from == 'invite' else 'trusted on first use'})",
                 time.monotonic() - started)

    generated = False
    key = Path(profile.key) if profile.key else sshfiles.find_key()
    if key is None:
        key = sshfiles.generate_key(interactive)
        generated = True
        console.done(f"made a new key {key}" + ("" if interactive else " (no passphrase: not on a terminal)"),
                     time.monotonic() - started)
    profile = replace(profile, key=str(key))
    installed = _install_key(profile, answered[0].address, pins, key, timeout, console)
    console.done(f"key login to {profile.name} works" + (" (key installed)" if installed else ""),
                 time.monotonic() - started)

    everything = {**existing, profile.name: profile}
    sshfiles.write_files(everything, alias=profile.host_key_alias, keys=pins)
    profiles.save(everything)
    backup = sshfiles.ensure_include()
    return AddResult(profile=profile, reached=answered[0].address, fingerprint=shown, pinned_from=pinned_from,
                     key=key, key_generated=generated, key_installed=installed, include_backup=backup)


def remove(name: str) -> Profile:
    existing = profiles.load()
    profile = existing.pop(name, None)
    if profile is None:
        raise NbremoteError(f"no host profile {name!r}", hint="`nbremote hosts` lists them",
                            exit_code=ExitCode.USAGE)
    profiles.save(existing)
    sshfiles.write_files(existing, alias=profile.host_key_alias, keys=None)
    profiles.forget_path(name)
    return profile


def listing() -> list[dict]:
    last = profiles.last_paths()
    rows = []
    for name, p in sorted(profiles.load().items()):
        recent = last.get(name)
        rows.append({
            "name": name, "user": p.user, "port": p.port, "addresses": [str(a) for a in p.addresses],
            "key": p.key, "up": {k: v for k, v in vars(p.up).items() if v is not None},
            "last_path": None if recent is None else {
                "address": recent.address, "kind": recent.kind, "rtt_ms": recent.rtt_ms,
                "login_s": recent.login_s, "when": recent.when},
        })
    return rows


def ssh_argv(name: str, command: list[str], *, timeout: float, interactive: bool) -> tuple[list[str], Reached | None]:
    """ssh to a profile over the address that answers first: the argv to exec, and the race's winner."""
    profile = profiles.load().get(profiles.check_name(name))
    if profile is None:
        raise NbremoteError(f"no host profile {name!r}", hint=f"`nbremote add {name}` sets one up",
                            exit_code=ExitCode.USAGE)
    place = remote.ProfileHost(profile, timeout=timeout, interactive=interactive, persist=False)
    reached = place.connect()
    return place.connection.ssh_argv(command), reached
