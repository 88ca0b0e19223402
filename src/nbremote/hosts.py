"""add / remove / hosts / ssh: host profiles from the first key to the last path used.

`add` checks everything it was given before it writes anything: the name, the
addresses, the port, the invite, the profile file; then it reaches the server
(ssh-keyscan on every address at once), pins its host key (the invite's, or
the one shown on first use), installs the user's key over one password login
if key login does not work yet, and only then writes the profile, the pinned
key, the Host block and the Include line.

An invite from a `server init` that waits for the user's first key login
(`#wait=TOKEN`, see server/onboard.py) adds one step: the password login
installs the key only while that init waits with that token, the key login
that follows is the one the server waits for, and it stays on the server
until init has finished, so that the profile gets the final port and
addresses from the record init writes.
"""

from __future__ import annotations

import json
import re
import shlex
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
from nbremote import reach
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
        return {
            "name": self.profile.name,
            "addresses": [str(a) for a in self.profile.addresses],
            "user": self.profile.user,
            "port": self.profile.port,
            "reached": str(self.reached),
            "fingerprint": self.fingerprint,
            "pinned_from": self.pinned_from,
            "key": str(self.key),
            "key_generated": self.key_generated,
            "key_installed": self.key_installed,
        }


def _usage(message: str, hint: str | None = None) -> NbremoteError:
    return NbremoteError(message, hint=hint, exit_code=ExitCode.USAGE)


def _checked_profile(req: AddRequest, existing: dict[str, Profile]) -> tuple[Profile, invites.Invite | None]:
    """The profile to add and the invite, or a USAGE error; nothing touched."""
    name = profiles.check_name(req.name)
    if name in existing:
        raise _usage(
            f"a host profile {name!r} exists already", hint=f"`nbremote remove {name}` first to set it up again"
        )
    if sshfiles.collides(name):
        raise _usage(
            f"~/.ssh/config already has a `Host {name}`",
            hint=f"choose another name, or use that entry directly: `nbremote up {name}`",
        )
    parsed = None
    user: str | None
    relay, tunnel = None, None
    if req.invite is not None:
        if req.addresses or req.port is not None or req.user is not None:
            raise _usage("--invite gives the user, addresses and port: leave out --address, --user and --port")
        parsed = invites.parse(req.invite)
        addresses, user, port = tuple(parsed.addresses), parsed.user, parsed.port
        relay, tunnel = parsed.relay, parsed.tunnel_port
    else:
        if not req.addresses:
            raise _usage(f"no address for {name}", hint="give --address (several, best first) or --invite")
        addresses = tuple(parse_address(a) for a in req.addresses)
        user = profiles.check_user(req.user) if req.user is not None else None
        port = check_port(req.port) if req.port is not None else 22
    key = None
    if req.key is not None:
        key = str(sshfiles.check_key(Path(req.key).expanduser().absolute()))
    return Profile(
        name=name, addresses=addresses, user=user, port=port, key=key, up=req.up, relay=relay, tunnel=tunnel
    ), parsed


def _pin(
    profile: Profile,
    scans: list[sshfiles.Scan],
    fingerprint: str | None,
    confirm: Callable[[str], bool],
    console: Console,
) -> tuple[list[tuple[str, str]], str]:
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
                    exit_code=ExitCode.HOST_KEY,
                )
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
                exit_code=ExitCode.HOST_KEY,
            )
    if not confirm(f"{profile.name} at {answered[0].address} has the {kind} key {shown}. Trust it?"):
        raise NbremoteError(
            "nothing changed (host key not trusted)",
            hint="compare it with `nbremote server invite` on the server, or add with --invite",
            exit_code=ExitCode.HOST_KEY,
        )
    return [(kind, blob)], "first use"


def _login(
    profile: Profile,
    address: Address,
    known_hosts: Path,
    *,
    batch: bool,
    timeout: float,
    command: str,
    stdin: str | None = None,
    wait_s: float = 0,
) -> tuple[Connection, subprocess.CompletedProcess]:
    options = tuple(
        (k, str(known_hosts) if k == "UserKnownHostsFile" else v)
        for k, v in sshfiles.connection_options(profile, address)
    )
    conn = Connection(
        Target(label=profile.name, destination=profile.name, options=options),
        control_dir=paths.runtime_dir(),
        timeout=timeout,
        batch=batch,
        persist=False,
    )
    done = subprocess.run(
        conn.command_argv(command),
        input=stdin,
        capture_output=True,
        text=True,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=None if not batch else timeout + 30 + wait_s,
        env=ssh_env(),
    )
    return conn, done


# Run on the server in the password login, before the key goes in: exit 0 only while a
# `server init` waits with this token (its record is the user's own file); MOVED_ON when that
# init is past its wait (another laptop's key login came first), NOT_WAITING otherwise.
JOIN_CHECK = r"""
import json, os, sys, time
try:
    with open(os.path.expanduser("~/.local/state/nbremote/server-init.json")) as f:
        doc = json.load(f)
except (OSError, ValueError):
    doc = {}
doc = doc if isinstance(doc, dict) and doc.get("token") == sys.argv[1] else {}
if doc.get("state") == "waiting" and time.time() - float(doc.get("beat", 0)) > 20:
    doc = {}  # its init was killed: it beats every few seconds while it waits
sys.exit({"waiting": 0, "finishing": 91, "done": 91}.get(doc.get("state"), 90))
"""
NOT_WAITING, MOVED_ON = 90, 91

# Run on the server in the first key login: say so to the waiting init, then wait for its
# record to say done or failed (at most argv[2] seconds) and print it.
JOIN_AND_WAIT = r"""
import json, os, sys, time
token, limit = sys.argv[1], float(sys.argv[2])
folder = os.path.expanduser("~/.local/state/nbremote")
def record():
    try:
        with open(os.path.join(folder, "server-init.json")) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return {"state": "gone"}
    return doc if isinstance(doc, dict) and doc.get("token") == token else {"state": "gone"}
doc = record()
if doc.get("state") == "waiting":
    mark = os.path.join(folder, "server-init-joined")
    with open(mark + ".tmp", "w") as out:
        json.dump({"token": token, "from": os.environ.get("SSH_CLIENT", "?").split(" ")[0]}, out)
    os.replace(mark + ".tmp", mark)
end = time.monotonic() + limit
while doc.get("state") in ("waiting", "finishing") and time.monotonic() < end:
    time.sleep(0.2)
    doc = record()
print(json.dumps(doc))
"""
SERVER_FINISH_S = 300.0


def _password_refused(profile: Profile, stderr: str) -> NbremoteError | None:
    """Why the one password login of a waiting init was refused, when it was."""
    match = re.search(r"Permission denied \(([^)]*)\)", stderr)
    if not match:
        return None
    if {"password", "keyboard-interactive"} & set(match.group(1).split(",")):
        return NbremoteError(
            f"wrong password for {profile.user} on {profile.name}",
            exit_code=ExitCode.AUTH_FAILED,
            hint=f"{profile.name} keeps waiting: run the same `nbremote add` again and type "
            f"{profile.user}'s password on the server",
        )
    return NbremoteError(
        f"{profile.name} takes no password from this laptop",
        exit_code=ExitCode.AUTH_FAILED,
        details=[f"it offers only: {match.group(1)}"],
        hint="while `server init` waits, it takes a password only from its own network "
        f"(the LAN) and only for {profile.user}: run `nbremote add` on the same network "
        "as the server; if its init has finished already, passwords are off: ask its "
        "owner to add your public key",
    )


def _install_key(
    profile: Profile,
    address: Address,
    pins: list[tuple[str, str]],
    key: Path,
    timeout: float,
    console: Console,
    wait: str | None = None,
) -> bool:
    """True when the key had to be installed; an error when login with it still fails.
    wait: the token of a waiting `server init`; the key goes in only while it waits."""
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
        console.note(
            f"installing {key.name}.pub for {profile.user or 'you'} on {profile.name}: log in once with the password"
        )
        command = sshfiles.install_command()
        if wait is not None:
            command = f"{shlex.join(['python3', '-c', JOIN_CHECK, wait])} && {command}"
        conn, done = _login(profile, address, known, batch=False, timeout=timeout, command=command, stdin=public + "\n")
        if wait is not None and done.returncode == MOVED_ON:
            raise NbremoteError(
                f"{profile.name} no longer takes a new laptop: another one's key login came first, and its "
                "init has moved on; nothing was installed",
                hint=f"a second laptop can join only while init waits; now add its public key to "
                f"~{profile.user}/.ssh/authorized_keys from the first laptop (`ssh {profile.name}`), "
                f"then `nbremote add {profile.name} --invite LINE` with the line `nbremote server invite` "
                "prints",
                exit_code=ExitCode.ERROR,
            )
        if wait is not None and done.returncode == NOT_WAITING:
            raise NbremoteError(
                f"{profile.name} is not waiting for a laptop with this invite: nothing was installed",
                hint=f"its `server init` stopped or ran out of time, or printed a newer invite since: run "
                f"`sudo nbremote server init` on {profile.name} again and use the line it prints",
                exit_code=ExitCode.ERROR,
            )
        if done.returncode != 0:
            refused = _password_refused(profile, done.stderr) if wait is not None and done.returncode == 255 else None
            raise refused or (
                conn.failure(done.stderr)
                if done.returncode == 255
                else NbremoteError(
                    f"could not add the key to ~/.ssh/authorized_keys on {profile.name}",
                    details=done.stderr.strip().splitlines()[-3:],
                    exit_code=ExitCode.ERROR,
                )
            )
        conn, done = _login(profile, address, known, batch=True, timeout=timeout, command="true")
        if done.returncode != 0:
            raise NbremoteError(
                f"the key is installed on {profile.name} but logging in with it still fails",
                details=done.stderr.strip().splitlines()[-3:],
                hint="the server may not accept keys (PubkeyAuthentication), "
                "or its home directory is writable by others (sshd's StrictModes)",
                exit_code=ExitCode.AUTH_FAILED,
            )
    return True


def _join(
    profile: Profile,
    address: Address,
    pins: list[tuple[str, str]],
    fingerprint: str,
    wait: str,
    timeout: float,
    console: Console,
) -> Profile:
    """The key login a waiting init waits for; then its final record: the profile with the final
    port and addresses, proved by one more key login there."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbremote-add-") as tmp:
        known = Path(tmp) / "known_hosts"
        known.write_text(sshfiles.render_known_hosts("", profile.host_key_alias, pins))
        command = shlex.join(["python3", "-c", JOIN_AND_WAIT, wait, str(SERVER_FINISH_S)])
        try:
            with console.progress(f"{profile.name} is hardening sshd, setting its firewall and asking its router"):
                conn, done = _login(
                    profile, address, known, batch=True, timeout=timeout, command=command, wait_s=SERVER_FINISH_S
                )
        except KeyboardInterrupt:
            raise NbremoteError(
                f"stopped waiting for {profile.name} to finish (Ctrl-C): your key is installed there, "
                "nothing was written on this laptop",
                exit_code=ExitCode.INTERRUPTED,
                hint=f"once its init has finished, `nbremote server invite` on {profile.name} prints the line "
                f"for `nbremote add {profile.name} --invite LINE`",
            ) from None
        if done.returncode != 0:
            raise (
                conn.failure(done.stderr)
                if done.returncode == 255
                else NbremoteError(
                    f"could not tell {profile.name}'s init about the key login",
                    exit_code=ExitCode.ERROR,
                    details=done.stderr.strip().splitlines()[-3:],
                    hint="python3 must be on the server's PATH",
                )
            )
        try:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            record = {"state": "unreadable"}
        state = record.get("state")
        if state == "failed":
            raise NbremoteError(
                f"{profile.name}'s init failed after your key login: {record.get('error')}",
                hint="your key is installed; the server's terminal says more; once init has "
                "finished there, `nbremote server invite` prints the line for `nbremote add`",
                exit_code=ExitCode.ERROR,
            )
        if state != "done":
            raise NbremoteError(
                f"{profile.name} stopped waiting before it had finished (its record says {state})",
                hint=f"your key is installed; run `sudo nbremote server init` on {profile.name} again, "
                "then `nbremote server invite` there prints the line for `nbremote add`",
                exit_code=ExitCode.ERROR,
            )
        if record.get("fingerprint") != fingerprint:
            raise NbremoteError(
                f"{profile.name}'s init names another host key than the invite: refusing",
                details=[f"invite: {fingerprint}", f"record: {record.get('fingerprint')}"],
                exit_code=ExitCode.HOST_KEY,
            )
        try:
            final = invites.check(
                invites.Invite(
                    user=profile.user or "",
                    hosts=tuple(record["hosts"]),
                    port=int(record["port"]),
                    fingerprint=fingerprint,
                )
            )
        except (KeyError, TypeError, ValueError):
            raise NbremoteError(
                f"{profile.name}'s init wrote a record this nbremote cannot read",
                details=[json.dumps(record)[:200]],
                exit_code=ExitCode.ERROR,
            ) from None
        profile = replace(profile, addresses=tuple(final.addresses), port=final.port)
        console.done(
            f"{profile.name} has finished: port {final.port}, addresses {', '.join(final.hosts)}",
            time.monotonic() - started,
        )
        conn, done = _login(profile, profile.addresses[0], known, batch=True, timeout=timeout, command="true")
        if done.returncode != 0:
            raise NbremoteError(
                f"{profile.name} has finished, but a key login on port {final.port} fails",
                details=done.stderr.strip().splitlines()[-3:],
                exit_code=ExitCode.UNREACHABLE,
                hint=f"`nbremote server check` on {profile.name} shows its firewall and sshd",
            )
    return profile


def add(
    req: AddRequest, console: Console, *, interactive: bool, confirm: Callable[[str], bool], timeout: float = 5.0
) -> AddResult:
    started = time.monotonic()
    existing = profiles.load()
    profile, parsed = _checked_profile(req, existing)
    fingerprint = parsed.fingerprint if parsed else None
    wait = parsed.wait if parsed else None

    with console.progress(f"looking for {profile.name}"):
        scans = sshfiles.scan_all(profile.endpoints(), timeout, profile.key)
    answered = [s for s in scans if s.keys]
    if not answered:
        raise NbremoteError(
            f"cannot reach {profile.name}",
            details=["tried " + ", ".join(f"{s.address} ({s.error})" for s in scans)],
            hint="check the address and that sshd runs there"
            + ("; a waiting `server init` is reached on its LAN only" if wait else ""),
            exit_code=ExitCode.UNREACHABLE,
        )
    pins, pinned_from = _pin(profile, scans, fingerprint, confirm, console)
    shown = invites.fingerprint(pins[0][1])
    console.done(
        f"{profile.name} answers at {answered[0].address}; host key {shown} "
        f"({'matches the invite' if pinned_from == 'invite' else 'trusted on first use'})",
        time.monotonic() - started,
    )

    generated = False
    key = Path(profile.key) if profile.key else sshfiles.find_key()
    if key is None:
        key = sshfiles.generate_key(interactive)
        generated = True
        console.done(
            f"made a new key {key}" + ("" if interactive else " (no passphrase: not on a terminal)"),
            time.monotonic() - started,
        )
    profile = replace(profile, key=str(key))
    try:
        installed = _install_key(profile, answered[0].address, pins, key, timeout, console, wait)
    except BaseException:
        if generated:  # nothing of this run is left behind: the key went nowhere
            key.unlink(missing_ok=True)
            Path(f"{key}.pub").unlink(missing_ok=True)
        raise
    console.done(
        f"key login to {profile.name} works" + (" (key installed)" if installed else ""), time.monotonic() - started
    )
    if wait is not None:
        profile = _join(profile, answered[0].address, pins, shown, wait, timeout, console)

    everything = {**existing, profile.name: profile}
    sshfiles.write_files(everything, alias=profile.host_key_alias, keys=pins)
    profiles.save(everything)
    backup = sshfiles.ensure_include()
    return AddResult(
        profile=profile,
        reached=answered[0].address,
        fingerprint=shown,
        pinned_from=pinned_from,
        key=key,
        key_generated=generated,
        key_installed=installed,
        include_backup=backup,
    )


def remove(name: str) -> Profile:
    existing = profiles.load()
    profile = existing.pop(name, None)
    if profile is None:
        raise NbremoteError(f"no host profile {name!r}", hint="`nbremote hosts` lists them", exit_code=ExitCode.USAGE)
    profiles.save(existing)
    sshfiles.write_files(existing, alias=profile.host_key_alias, keys=None)
    profiles.forget_path(name)
    reach.forget_answers(name)
    return profile


def listing() -> list[dict]:
    last = profiles.last_paths()
    seen = reach.answered()
    rows = []
    for name, p in sorted(profiles.load().items()):
        recent = last.get(name)
        rows.append(
            {
                "name": name,
                "user": p.user,
                "port": p.port,
                "addresses": [str(a) for a in p.addresses],
                "key": p.key,
                "up": {k: v for k, v in vars(p.up).items() if v is not None},
                "relay": None if p.relay is None else {"relay": str(p.relay), "tunnel": p.tunnel},
                # When each way in last completed a login (the relay's as "127.0.0.1:N via …").
                "answered": {str(a): seen.get(name, {}).get(str(a)) for a in p.endpoints()},
                "ways": reach.ways_in(p),
                "last_path": None
                if recent is None
                else {
                    "address": recent.address,
                    "kind": recent.kind,
                    "rtt_ms": recent.rtt_ms,
                    "login_s": recent.login_s,
                    "when": recent.when,
                },
            }
        )
    return rows


def ssh_argv(name: str, command: list[str], *, timeout: float, interactive: bool) -> tuple[list[str], Reached | None]:
    """ssh to a profile over the address that answers first: the argv to exec, and the race's winner."""
    profile = profiles.load().get(profiles.check_name(name))
    if profile is None:
        raise NbremoteError(
            f"no host profile {name!r}", hint=f"`nbremote add {name}` sets one up", exit_code=ExitCode.USAGE
        )
    place = remote.ProfileHost(profile, timeout=timeout, interactive=interactive, persist=False)
    reached = place.connect()
    return place.connection.ssh_argv(command), reached
