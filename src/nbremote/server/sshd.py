"""sshd: read its effective settings, harden it without locking anyone out, undo it.

What `harden` promises, in the order it happens:

1. It refuses before touching anything when the current config does not
   pass `sshd -t`, when an input is wrong (port, user), or when an allowed
   user has no authorized key sshd would accept (the lockout guard).
2. It never rewrites the user's main config: it writes one drop-in file
   (`sshd_config.d/00-nbremote.conf`, first in the glob, and sshd keeps the
   first value of each setting), adding the `Include` line at the top of the
   main file only where it is missing.
3. The new config must pass `sshd -t` and `sshd -T` must show our values
   (another line that wins over ours is reported, not silently ignored)
   before sshd is reloaded.
4. After the reload, a fresh key login on the new port must work for every
   allowed user; otherwise the originals go back and sshd is reloaded again.
5. If harden is killed at any point in 2-4, the guard it started before
   touching anything (guard.py) puts the originals back and reloads sshd.

How the login is proved without the user's private key: a throwaway ed25519
key is appended to the user's authorized_keys with `from="127.0.0.1,::1",restrict`
(usable only from this machine, no forwarding, no pty), `ssh` logs in with it
to 127.0.0.1 on the new port checking the ed25519 host key, and the line is
removed again in a `finally` (the file goes back byte for byte). This goes
through exactly what a remote login does (port, AllowUsers, the user's shell,
StrictModes on ~/.ssh), except the network path, which `firewall` and
`expose` cover.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import pwd
import re
import secrets
import shlex
import signal
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import netinfo, rootcmd, system
from nbremote.server.files import Backup, Original, Transaction, atomic_write
from nbremote.server.guardpipe import Guard, take_out_verify_key

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
MARKER = "nbremote"
DROPIN_NAME = "00-nbremote.conf"

# Modern algorithms only. sntrup761 (post-quantum hybrid) first; curve25519
# stays for clients older than OpenSSH 8.5 (Windows 10's built-in ssh is 8.1):
# ssh-audit 3.9 warns about it (not post-quantum) but finds nothing that fails.
# No NIST curves, no SHA-1, no CBC, no non-etm MACs. Algorithms this OpenSSH
# does not know are left out, so the file stays valid on older and newer ones.
KEX = (
    "mlkem768x25519-sha256",
    "sntrup761x25519-sha512",
    "sntrup761x25519-sha512@openssh.com",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
MACS = ("hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com")
HOST_KEY_ALGORITHMS = ("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com")


# ---------------------------------------------------------------- pure parts


def parse_sshd_T(text: str) -> dict[str, list[str]]:
    """`sshd -T` output as keyword -> values; repeated keywords (port, hostkey) accumulate."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            settings.setdefault(key.lower(), []).append(value.strip())
    return settings


def first(settings: dict[str, list[str]], key: str, default: str = "") -> str:
    values = settings.get(key)
    return values[0] if values else default


def listed(settings: dict[str, list[str]], key: str) -> list[str]:
    """A setting that is a list, whether sshd printed it on one line or many."""
    items: list[str] = []
    for value in settings.get(key, []):
        items += value.replace(",", " ").split()
    return [] if items == ["none"] else items


@dataclass(frozen=True)
class Hardening:
    port: int
    allow_users: tuple[str, ...]
    host_key: str = "/etc/ssh/ssh_host_ed25519_key"


def pick(preferred: tuple[str, ...], supported: set[str] | None) -> list[str]:
    return [a for a in preferred if supported is None or a in supported]


def render_dropin(h: Hardening, supported: dict[str, set[str]] | None = None) -> str:
    """The drop-in's text. `supported` maps kex/cipher/mac to what this OpenSSH knows."""
    supported = supported or {}
    lines = [
        f"# Written by {MARKER} (`nbremote server harden`); `nbremote server restore` removes it.",
        "# First in the Include glob, and sshd keeps the first value it reads of each setting.",
        f"Port {h.port}",
        f"AllowUsers {' '.join(h.allow_users)}",
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "AuthenticationMethods publickey",
        f"HostKey {h.host_key}",
        f"HostKeyAlgorithms {','.join(HOST_KEY_ALGORITHMS)}",
        f"KexAlgorithms {','.join(pick(KEX, supported.get('kex')))}",
        f"Ciphers {','.join(pick(CIPHERS, supported.get('cipher')))}",
        f"MACs {','.join(pick(MACS, supported.get('mac')))}",
    ]
    return "\n".join(lines) + "\n"


def expected_effective(h: Hardening, supported: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """What `sshd -T` must show once the drop-in is in force."""
    supported = supported or {}
    return {
        "port": [str(h.port)],
        "allowusers": list(h.allow_users),
        "permitrootlogin": ["no"],
        "passwordauthentication": ["no"],
        "kbdinteractiveauthentication": ["no"],
        "pubkeyauthentication": ["yes"],
        "hostkeyalgorithms": list(HOST_KEY_ALGORITHMS),
        "kexalgorithms": pick(KEX, supported.get("kex")),
        "ciphers": pick(CIPHERS, supported.get("cipher")),
        "macs": pick(MACS, supported.get("mac")),
    }


def mismatches(effective: dict[str, list[str]], expected: dict[str, list[str]]) -> list[str]:
    found = []
    for key, want in expected.items():
        have = listed(effective, key)
        if have != want:
            found.append(f"{key}: wanted {' '.join(want)}, sshd uses {' '.join(have) or '(nothing)'}")
    return found


_INCLUDE = re.compile(r"^\s*Include\s+(.+?)\s*$", re.I)
_DIRECTIVE = re.compile(r"^\s*[A-Za-z]")


def include_dir(main_text: str, etc_ssh: Path) -> tuple[Path | None, bool]:
    """(drop-in directory the main config includes, whether that Include is before
    every other directive). The drop-in only wins when it is."""
    seen_other = False
    for line in main_text.splitlines():
        match = _INCLUDE.match(line)
        if match:
            for pattern in shlex.split(match.group(1)):
                full = pattern if pattern.startswith("/") else str(etc_ssh / pattern)
                candidate = Path(full).parent / DROPIN_NAME
                if fnmatch.fnmatch(str(candidate), full):
                    return Path(full).parent, not seen_other
        elif _DIRECTIVE.match(line):
            seen_other = True
    return None, False


def with_include(main_text: str, directory: Path) -> str:
    """The main config with our Include at the top (Debian's own layout)."""
    return (
        f"# Added by {MARKER}: settings in {directory} come first. `nbremote server restore` removes this.\n"
        f"Include {directory}/*.conf\n\n" + main_text
    )


def check_port(port: int, current_ports: list[int], busy: dict[int, str]) -> None:
    """Refuse a port sshd could not take, naming it. busy: port -> who listens there."""
    if not 1 <= port <= 65535:
        raise NbremoteError(
            f"port {port} is not a TCP port", hint="choose 1024-65535 (or 22)", exit_code=ExitCode.USAGE
        )
    if port < 1024 and port != 22:
        raise NbremoteError(
            f"port {port} is below 1024 and not 22",
            hint="ports below 1024 belong to other services; choose 22 or one in 1024-65535, e.g. 22222",
            exit_code=ExitCode.USAGE,
        )
    if port in busy and port not in current_ports:
        raise NbremoteError(
            f"port {port} is already in use by {busy[port]}",
            hint="choose another port with --port",
            exit_code=ExitCode.USAGE,
        )


def check_users(users: tuple[str, ...]) -> None:
    for user in users:
        if user == "root":
            raise NbremoteError(
                "root cannot be an allowed user: harden turns root login off",
                hint="name the account you log in with, e.g. --allow-user alice",
                exit_code=ExitCode.USAGE,
            )
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise NbremoteError(
                f"there is no user {user!r} on this machine",
                hint="check the name with `getent passwd`, or create the account first",
                exit_code=ExitCode.USAGE,
            ) from None


def unified_diff(path: Path, old: bytes | None, new: bytes | None) -> str:
    old_lines = [] if old is None else old.decode(errors="replace").splitlines(keepends=True)
    new_lines = [] if new is None else new.decode(errors="replace").splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(
            old_lines, new_lines, "/dev/null" if old is None else f"a{path}", "/dev/null" if new is None else f"b{path}"
        )
    )


# ---------------------------------------------------------------- the service manager seam


class SshdService(Protocol):
    """How sshd is reloaded (and started again if a reload killed it)."""

    name: str

    def reload(self) -> None: ...

    def start(self) -> None: ...


class ServiceManagerSshd:
    """A service manager (systemd, or an init script through `service`)."""

    def __init__(self, argv_prefix: list[str], unit: str, run: system.Runner = system.run) -> None:
        self.argv_prefix, self.unit, self.run = argv_prefix, unit, run
        self.name = f"{argv_prefix[0]} ({unit})"

    def _call(self, action: str) -> None:
        argv = (
            [*self.argv_prefix, action, self.unit]
            if self.argv_prefix[0] == "systemctl"
            else [*self.argv_prefix, self.unit, action]
        )
        done = self.run(argv)
        if done.returncode != 0:
            raise NbremoteError(f"`{shlex.join(argv)}` failed", details=done.stderr.splitlines())

    def reload(self) -> None:
        self._call("reload")

    def start(self) -> None:
        self._call("start")


class PidFileSshd:
    """No service manager: SIGHUP to the pid in sshd's PidFile.

    sshd re-executes itself with its original arguments on SIGHUP; if the new
    config kept it from starting, `start` runs that same command line again.
    """

    name = "SIGHUP to the PidFile's pid"

    def __init__(self, pidfile: Path, binary: str, run: system.Runner = system.run) -> None:
        self.pidfile, self.binary, self.run = pidfile, binary, run
        self.cmdline: list[str] | None = None

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) else None

    def reload(self) -> None:
        pid = self.pid()
        if pid is None:
            raise NbremoteError(f"sshd is not running (no live pid in {self.pidfile})")
        self.cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        os.kill(pid, signal.SIGHUP)

    def start(self) -> None:
        argv = self.cmdline or [self.binary]
        done = self.run(argv)
        if done.returncode != 0:
            raise NbremoteError(
                f"could not start sshd again with `{shlex.join(argv)}`", details=done.stderr.splitlines()
            )


def service_for(pidfile: Path, binary: str, run: system.Runner = system.run, root: Path = Path("/")) -> SshdService:
    """systemd where it is PID 1, else the `service` wrapper where an init script exists,
    else SIGHUP by PidFile (containers, machines without an init system)."""
    if (root / "run/systemd/system").is_dir():
        unit = "ssh" if (root / "lib/systemd/system/ssh.service").exists() else "sshd"
        return ServiceManagerSshd(["systemctl"], unit, run)
    for unit in ("ssh", "sshd"):
        if (root / "etc/init.d" / unit).exists() and (root / "usr/sbin/service").exists():
            return ServiceManagerSshd(["service"], unit, run)
    return PidFileSshd(pidfile, binary, run)


# ---------------------------------------------------------------- the machine's sshd


@dataclass(frozen=True)
class FileChange:
    path: Path
    old: bytes | None
    new: bytes

    def diff(self) -> str:
        return unified_diff(self.path, self.old, self.new)


@dataclass
class HardenPlan:
    hardening: Hardening
    changes: list[FileChange]
    new_host_key: bool
    before: dict[str, list[str]]
    keys: dict[str, str]  # user -> where their working key is
    supported: dict[str, set[str]] = field(default_factory=dict)

    @property
    def already_done(self) -> bool:
        return not self.changes and not self.new_host_key

    def diff(self) -> str:
        text = "".join(c.diff() for c in self.changes)
        if self.new_host_key:
            text += f"+ new host key {self.hardening.host_key} (ssh-keygen -t ed25519)\n"
        return text

    def summary(self) -> str:
        old_port = first(self.before, "port", "22")
        port = (
            f"port {old_port} → {self.hardening.port}" if old_port != str(self.hardening.port) else f"port {old_port}"
        )
        keys = ", ".join(f"{u} (key found)" for u in self.hardening.allow_users)
        return f"{port} · passwords off for {keys} · root login off · modern algorithms only"


@dataclass
class HardenResult:
    already: bool
    port: int
    users: tuple[str, ...]
    reloaded_with: str = ""
    verified: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "already_hardened": self.already,
            "port": self.port,
            "allow_users": list(self.users),
            "reloaded_with": self.reloaded_with,
            "verified_logins": self.verified,
            "seconds": round(self.seconds, 3),
        }


class Sshd:
    """The machine's sshd. Nothing runs in the constructor."""

    def __init__(
        self,
        *,
        etc_ssh: Path = Path("/etc/ssh"),
        run: system.Runner = system.run,
        service: SshdService | None = None,
        binary: str | None = None,
        reload_timeout: float = 10.0,
    ) -> None:
        self.etc_ssh = etc_ssh
        self.config = etc_ssh / "sshd_config"
        self.backup = Backup(etc_ssh / "nbremote-backup")
        self.run = run
        self._binary = binary
        self._service = service
        self.reload_timeout = reload_timeout

    # ------------------------------------------------------------ reading

    @property
    def binary(self) -> str | None:
        if self._binary is None:
            self._binary = next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None) or ""
        return self._binary or None

    def require_installed(self) -> str:
        if self.binary is None:
            raise NbremoteError(
                "sshd is not installed (no /usr/sbin/sshd)",
                hint="install it: `apt-get install openssh-server` (Debian/Ubuntu) or `dnf install openssh-server`",
            )
        return self.binary

    @property
    def service(self) -> SshdService:
        if self._service is None:
            pidfile = Path(first(self.effective(), "pidfile", "/run/sshd.pid"))
            self._service = service_for(pidfile, self.require_installed(), self.run)
        return self._service

    def validate(self) -> str | None:
        """None when `sshd -t` accepts the config, else its error."""
        done = self.run([self.require_installed(), "-t", "-f", str(self.config)])
        return None if done.returncode == 0 else (done.stderr or done.stdout).strip() or f"exit {done.returncode}"

    def effective(self, user: str | None = None, addr: str = "127.0.0.1") -> dict[str, list[str]]:
        """What sshd uses; with user, for a login of that user from addr (Match blocks applied)."""
        argv = [self.require_installed(), "-T", "-f", str(self.config)]
        if user:
            argv += ["-C", f"user={user},host=localhost,addr={addr}"]
        done = self.run(argv)
        if done.returncode != 0:
            raise NbremoteError(
                "sshd cannot read its configuration", details=(done.stderr or done.stdout).strip().splitlines()
            )
        return parse_sshd_T(done.stdout)

    def supported(self) -> dict[str, set[str]]:
        found = {}
        for kind in ("kex", "cipher", "mac"):
            done = self.run(["ssh", "-Q", kind])
            if done.returncode == 0:
                found[kind] = set(done.stdout.split())
        return found

    def pid(self) -> int | None:
        """sshd's pid from its PidFile, if that process is alive."""
        try:
            pidfile = Path(first(self.effective(), "pidfile", "/run/sshd.pid"))
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError, NbremoteError):
            return None
        return pid if alive(pid) else None

    # ------------------------------------------------------------ the lockout guard

    def authorized_keys(self, user: str) -> tuple[str | None, list[str]]:
        """(file holding a key sshd would accept for user, problems found on the way)."""
        info = pwd.getpwnam(user)
        settings = self.effective(user)
        problems = []
        for raw in listed(settings, "authorizedkeysfile"):
            expanded = (
                raw.replace("%%", "\0")
                .replace("%h", info.pw_dir)
                .replace("%u", user)
                .replace("%U", str(info.pw_uid))
                .replace("\0", "%")
            )
            path = Path(expanded if expanded.startswith("/") else f"{info.pw_dir}/{expanded}")
            if not path.is_file():
                continue
            bad = _strict_modes_problem(path, info, settings)
            if bad:
                problems.append(bad)
                continue
            done = self.run(["ssh-keygen", "-l", "-f", str(path)])
            if done.returncode == 0 and done.stdout.strip():
                return str(path), problems
            problems.append(f"{path} holds no valid public key")
        return None, problems

    def keys_or_refuse(self, users: tuple[str, ...], port: int) -> dict[str, str]:
        keys, missing = {}, []
        for user in users:
            where, problems = self.authorized_keys(user)
            if where:
                keys[user] = where
            else:
                missing.append((user, problems))
        if missing:
            names = ", ".join(u for u, _ in missing)
            details = [p for _, problems in missing for p in problems]
            user = missing[0][0]
            raise NbremoteError(
                f"refusing to turn password login off: {names} would have no working key",
                details=details or [f"{u}: no authorized_keys file with a key" for u, _ in missing],
                hint=f"from your laptop, while passwords still work: `ssh-copy-id -p {first_port(self)} "
                f"{user}@THIS_SERVER`; or add your public key to ~{user}/.ssh/authorized_keys "
                f"(mode 600, ~/.ssh mode 700), then run harden again",
            )
        return keys

    # ------------------------------------------------------------ harden

    def plan(self, *, port: int | None, allow_users: tuple[str, ...]) -> HardenPlan:
        """Validate everything and work out the changes; touches nothing."""
        if port is not None:
            check_port(port, [], {})  # range errors first: they need nothing else
        if allow_users:
            check_users(allow_users)
        self.require_installed()
        if not system.is_root():
            raise NbremoteError(
                "harden needs root: sshd's config and host keys are root's",
                hint=f"run it with sudo: `{rootcmd.command('server', 'harden', '...')}`",
            )
        broken = self.validate()
        if broken:
            raise NbremoteError(
                "the current sshd config is already broken (`sshd -t` fails): refusing to touch it",
                details=broken.splitlines(),
                hint=f"fix {self.config} first; `sshd -t` shows the error",
            )
        before = self.effective()
        current_ports = [int(p) for p in before.get("port", ["22"])]
        port = current_ports[0] if port is None else port
        busy = {
            item.port: f"{item.process or 'another program'}" + (f" (pid {item.pid})" if item.pid else "")
            for item in netinfo.listeners()
            if item.process != "sshd"
        }
        check_port(port, current_ports, busy)
        if not allow_users:
            allow_users = tuple(listed(before, "allowusers"))
            sudo_user = os.environ.get("SUDO_USER")
            if not allow_users and sudo_user and sudo_user != "root":
                allow_users = (sudo_user,)
            if not allow_users:
                raise NbremoteError(
                    "name the users who may log in over ssh",
                    hint="e.g. `nbremote server harden --allow-user alice`",
                    exit_code=ExitCode.USAGE,
                )
            check_users(allow_users)
        keys = self.keys_or_refuse(allow_users, port)

        hardening = Hardening(port=port, allow_users=allow_users, host_key=str(self.etc_ssh / "ssh_host_ed25519_key"))
        supported = self.supported()
        main_old = self.config.read_bytes()
        changes = []
        directory, on_top = include_dir(main_old.decode(errors="replace"), self.etc_ssh)
        if directory is None:
            directory = self.etc_ssh / "sshd_config.d"
            changes.append(FileChange(self.config, main_old, with_include(main_old.decode(), directory).encode()))
        elif not on_top:
            raise NbremoteError(
                f"{self.config} has settings before its Include of {directory}: they would win over ours",
                hint=f"move the `Include {directory}/*.conf` line to the top of {self.config}, then run harden again",
            )
        dropin = directory / DROPIN_NAME
        new = render_dropin(hardening, supported).encode()
        old = dropin.read_bytes() if dropin.exists() else None
        if old != new:
            changes.append(FileChange(dropin, old, new))
        return HardenPlan(hardening, changes, not Path(hardening.host_key).exists(), before, keys, supported)

    def apply(
        self,
        plan: HardenPlan,
        *,
        step: Callable[[str], None] = lambda _: None,
        before_reload: Callable[[], None] = lambda: None,
        on_rollback: Callable[[], None] = lambda: None,
        firewall_port: int | None = None,
        checkpoint: Callable[[str], None] = lambda _: None,
    ) -> HardenResult:
        """before_reload/on_rollback: for a firewall that must let the new port in first;
        firewall_port: the one port it allowed before, which the guard sets it back to.

        checkpoint(name) is called between the steps ("backup", "write",
        "validate", "reload", "verify" with the verification key in place,
        "verified", and "rollback" once the files are back but sshd not yet
        reloaded): a test that kills harden there proves the guard (see
        guard.py) leaves sshd serving the old config whatever step dies.
        """
        started = time.monotonic()
        h = plan.hardening
        if plan.already_done:
            mismatch = mismatches(self.effective(), expected_effective(h, plan.supported))
            if mismatch:
                raise NbremoteError(
                    "the drop-in is in place but sshd does not use all of it",
                    details=mismatch,
                    hint=f"another file under {self.etc_ssh} overrides it",
                )
            return HardenResult(True, h.port, h.allow_users, seconds=time.monotonic() - started)
        if self.pid() is None:
            raise NbremoteError(
                "sshd is not running: harden reloads it and proves a login works",
                hint="start it first (`service ssh start` or `systemctl start ssh`)",
            )
        _ = self.service  # resolved from the config in force, before we change it
        guard = Guard.start()
        tx = Transaction()
        had_backup = self.backup.exists()
        try:
            self._write(plan, tx, guard, created_backup=not had_backup, checkpoint=checkpoint)
            checkpoint("write")
            problem = self.validate()
            if problem:
                raise NbremoteError(
                    "sshd rejects the hardened config (nothing was reloaded)", details=problem.splitlines()
                )
            mismatch = mismatches(self.effective(), expected_effective(h, plan.supported))
            if mismatch:
                raise NbremoteError(
                    "another setting wins over the drop-in (nothing was reloaded)",
                    details=mismatch,
                    hint=f"look for these keywords in {self.config} and other files it includes",
                )
        except BaseException:
            self._undo(tx, had_backup)
            guard.done()
            raise
        checkpoint("validate")
        step("sshd config validated and backed up")
        try:
            if firewall_port is not None:
                guard.firewall_moving(firewall_port)
            before_reload()
            self._reload(h.port)
            checkpoint("reload")
            step(f"sshd reloaded ({self.service.name})")
            verified = []
            for user in h.allow_users:
                error = self.verify_login(user, h.port, plan.keys[user], guard=guard, checkpoint=checkpoint)
                if error:
                    raise NbremoteError(
                        f"a fresh key login as {user} on port {h.port} failed after the reload",
                        details=error.splitlines(),
                    )
                verified.append(user)
            checkpoint("verified")
        except BaseException as exc:
            failures = self._undo(tx, had_backup)
            checkpoint("rollback")
            try:
                self._reload(int(first(plan.before, "port", "22")))
            except NbremoteError as again:
                failures.append(f"reload after restoring: {again.message}")
            try:
                on_rollback()
            except NbremoteError as again:
                failures.append(f"firewall: {again.message}")
            guard.done()
            if isinstance(exc, NbremoteError):
                exc.details.append(
                    "the previous config was restored and sshd reloaded with it"
                    if not failures
                    else f"restoring failed too: {'; '.join(failures)}"
                )
                exc.hint = exc.hint or "nothing changed; `--debug` shows each step"
            raise
        guard.done()
        return HardenResult(False, h.port, h.allow_users, self.service.name, verified, time.monotonic() - started)

    def _write(
        self,
        plan: HardenPlan,
        tx: Transaction,
        guard: Guard,
        *,
        created_backup: bool,
        checkpoint: Callable[[str], None],
    ) -> None:
        for change in plan.changes:
            tx.remember(change.path)
        if plan.new_host_key:
            key = Path(plan.hardening.host_key)
            tx.created(key)
            tx.created(Path(f"{key}.pub"))
        guard.expect(
            self.etc_ssh, list(tx.originals.values()), backup=self.backup.directory if created_backup else None
        )
        # Backup first: if we die halfway, `restore` still knows the originals.
        self.backup.save(list(tx.originals.values()), "nbremote server harden")
        checkpoint("backup")
        if plan.new_host_key:
            done = self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", plan.hardening.host_key])
            if done.returncode != 0:
                raise NbremoteError("could not create an ed25519 host key", details=done.stderr.splitlines())
        for change in plan.changes:
            change.path.parent.mkdir(mode=0o755, exist_ok=True)
            tx.write(change.path, change.new, mode=0o644 if change.old is None else None)

    def _undo(self, tx: Transaction, had_backup: bool) -> list[str]:
        failures = tx.rollback()
        if not had_backup:
            self.backup.remove()
        return failures

    def _reload(self, port: int) -> None:
        """Reload and wait until sshd listens on port with fresh sockets."""
        old = netinfo.listener_inodes(port)
        pid = self.pid()
        self.service.reload()
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            now = netinfo.listener_inodes(port)
            if now and not now & old:
                return
            if pid is not None and not alive(pid):
                # sshd exits when its re-executed self cannot start with the new config.
                self.service.start()
                pid = None
            time.sleep(0.05)
        raise NbremoteError(f"sshd did not listen on port {port} within {self.reload_timeout:.0f} s of the reload")

    # ------------------------------------------------------------ the verification login

    def verify_login(
        self,
        user: str,
        port: int,
        authorized_keys: str,
        *,
        guard: Guard | None = None,
        checkpoint: Callable[[str], None] = lambda _: None,
    ) -> str | None:
        """None when a fresh key login as user on port works, else what ssh said."""
        host_pub = (self.etc_ssh / "ssh_host_ed25519_key.pub").read_text().split()
        keys_file = Path(authorized_keys)
        tag = f"nbremote-verify-{secrets.token_hex(4)}"
        with tempfile.TemporaryDirectory(prefix="nbremote-verify-") as tmp:
            key = Path(tmp, "key")
            done = self.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", tag, "-f", str(key)])
            if done.returncode != 0:
                return f"ssh-keygen failed: {done.stderr.strip()}"
            known = Path(tmp, "known_hosts")
            known.write_text(f"nbremote-self {host_pub[0]} {host_pub[1]}\n")
            line = f'from="127.0.0.1,::1",restrict {Path(f"{key}.pub").read_text().strip()}\n'.encode()
            original = Original.read(keys_file)
            assert original.content is not None  # the lockout guard found a key in it
            separator = b"" if original.content.endswith(b"\n") or not original.content else b"\n"
            added = original.content + separator + line
            if guard:
                guard.verify_key(original, added, tag, Path(tmp))
            atomic_write(keys_file, added)
            try:
                checkpoint("verify")
                done = self.run(
                    [
                        "ssh",
                        "-F",
                        "/dev/null",
                        "-i",
                        str(key),
                        "-o",
                        "IdentitiesOnly=yes",
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "StrictHostKeyChecking=yes",
                        "-o",
                        f"UserKnownHostsFile={known}",
                        "-o",
                        "GlobalKnownHostsFile=/dev/null",
                        "-o",
                        "HostKeyAlias=nbremote-self",
                        "-o",
                        "ConnectTimeout=5",
                        "-p",
                        str(port),
                        "-l",
                        user,
                        "--",
                        "127.0.0.1",
                        "true",
                    ],
                    timeout=20,
                )
            finally:
                take_out_verify_key(original, added, tag)
                if guard:
                    guard.verify_key_gone()
        if done.returncode == 0:
            return None
        return done.stderr.strip() or f"ssh exited {done.returncode}"

    # ------------------------------------------------------------ restore

    def restore(self) -> list[str]:
        """Put back what harden changed; return the paths restored ([] when nothing to do)."""
        self.require_installed()
        if not system.is_root():
            raise NbremoteError(
                "restore needs root: sshd's config is root's",
                hint=f"run it with sudo: `{rootcmd.command('server', 'restore')}`",
            )
        if not self.backup.exists():
            return []
        originals = self.backup.load()
        tx = Transaction()
        for original in originals:
            tx.remember(original.path)
        for original in originals:
            original.put_back()
        problem = self.validate()
        if problem:
            tx.rollback()
            raise NbremoteError(
                "the backed-up config does not pass `sshd -t`; nothing was restored",
                details=problem.splitlines(),
                hint=f"the backup is in {self.backup.directory}",
            )
        self.backup.remove()
        if self.pid() is not None:
            self._reload(int(first(self.effective(), "port", "22")))
        return [str(o.path) for o in originals]


def alive(pid: int) -> bool:
    # A zombie counts as dead: on machines without an init, nobody may reap it for a while.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def first_port(sshd: Sshd) -> str:
    try:
        return first(sshd.effective(), "port", "22")
    except NbremoteError:
        return "22"


def _strict_modes_problem(path: Path, info: pwd.struct_passwd, settings: dict[str, list[str]]) -> str | None:
    """Why sshd's StrictModes would ignore this file, if it would."""
    if first(settings, "strictmodes", "yes") != "yes":
        return None
    home = Path(info.pw_dir)
    for p in [path, *path.parents]:
        st = p.stat()
        if st.st_uid not in (0, info.pw_uid):
            return f"{p} is owned by uid {st.st_uid}: sshd ignores {path} (StrictModes)"
        if st.st_mode & 0o022 and not (p != path and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{p} is writable by others: sshd ignores {path} (StrictModes); fix: chmod go-w {p}"
        if p == home or p == Path("/"):
            break
    return None
