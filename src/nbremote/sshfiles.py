"""The laptop's ssh files that host profiles need: keys, pinned host keys, Host blocks.

nbremote owns two files next to its profiles, `ssh_config` (one `Host NAME`
block per profile) and `known_hosts` (the pinned keys, under one
HostKeyAlias per profile so all of its addresses share them), and rewrites
them whole from the profiles. The user's ~/.ssh/config gets one line,
`Include <our ssh_config>`, at the top (the first value of a setting wins in
ssh_config, and an Include inside a Host block would be conditional); the rest
of that file is never changed, and a backup is taken before the first edit.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nbremote import logs, paths, profiles
from nbremote.addresses import Address, Relay
from nbremote.errors import ExitCode, NbremoteError
from nbremote.profiles import LastPath, Profile
from nbremote.ssh import Connection, Target, ssh_env

log = logs.get(__name__)

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
# Strongest first: the key pinned when trusting on first use.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def user_config_path() -> Path:
    return ssh_dir() / "config"


def our_config_path() -> Path:
    return paths.config_dir() / "ssh_config"


def known_hosts_path() -> Path:
    return paths.config_dir() / "known_hosts"


def relay_known_hosts_path() -> Path:
    return paths.config_dir() / "relay_known_hosts"


def _quote(path: Path) -> str:
    text = str(path)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def include_line() -> str:
    return f"Include {_quote(our_config_path())}"


# --- the user's ~/.ssh/config -------------------------------------------------


def host_names(text: str) -> set[str]:
    """Literal names in `Host` lines (patterns with * ? ! are not names one could collide with)."""
    names = set()
    for line in text.splitlines():
        match = re.match(r"\s*host(?:\s*=\s*|\s+)(.*)", line, re.I)
        if match:
            names |= {n.strip('"') for n in match.group(1).split() if not re.search(r"[*?!]", n)}
    return names


def collides(name: str) -> bool:
    """Does ~/.ssh/config (apart from our Include) already have a `Host NAME`?"""
    try:
        text = user_config_path().read_text(errors="replace")
    except OSError:
        return False
    return name.lower() in {n.lower() for n in host_names(text)}


def ensure_include() -> Path | None:
    """Put our Include line at the top of ~/.ssh/config once; return the backup when one was made."""
    path = user_config_path()
    line = include_line()
    try:
        old = path.read_bytes()
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        old, mode = None, 0o600
    if old is not None and line.encode() in [raw.strip() for raw in old.splitlines()]:
        return None
    backup = None
    if old is not None:
        backup = path.with_name("config.nbremote-backup")
        if not backup.exists():  # the one from before nbremote's first edit is the one worth keeping
            import shutil  # imported where used: kept out of `up HOST`'s start-up

            shutil.copy2(path, backup)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    # Byte for byte: the user's file may hold any encoding or line ending.
    paths.atomic_write(path, line.encode() + b"\n" + (old or b""), mode=mode)
    return backup


# --- our ssh_config and known_hosts -----------------------------------------------


def connection_options(profile: Profile, address: Address) -> tuple[tuple[str, str], ...]:
    """What ssh needs to reach `address` as this profile; the Host block says the same."""
    options = [("HostName", address.host), ("Port", str(address.port or profile.port))]
    if profile.user:
        options.append(("User", profile.user))
    if profile.key:
        options += [("IdentityFile", profile.key)]
    options += [
        ("HostKeyAlias", profile.host_key_alias),
        ("UserKnownHostsFile", str(known_hosts_path())),
        ("StrictHostKeyChecking", "yes"),
    ]
    if address.via is not None:
        options.append(("ProxyCommand", proxy_command(address.via, profile.key)))
    elif profile.relay is not None:
        # Once `up` went through the relay, our ssh_config's Host block for this name carries the
        # hop, and ssh would take it for this direct address too (the LAN tried through the relay).
        options.append(("ProxyCommand", "none"))
    return tuple(options)


RELAY_TIMEOUT = 5  # reaching the relay itself; reach.RELAY_CONNECT_TIMEOUT bounds the box's answer through it


def proxy_command(relay: Relay, key: str | None) -> str:
    """The hop through a relay to its loopback port (what ProxyJump does, with our options).

    The relay's own key is trusted on first use in a file of its own: it
    protects nothing of the session, which is end to end with the box's
    pinned key; the relay sees only ciphertext.
    """
    argv = [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={RELAY_TIMEOUT}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        f"UserKnownHostsFile={relay_known_hosts_path()}",
        # Through the laptop's master to the relay when one is up (reach.race opens it),
        # else a login of its own, as before there was one.
        "-o",
        "ControlMaster=no",
        "-o",
        f"ControlPath={relay_master(relay, key).control_path}",
    ]
    if key:
        argv += ["-i", key]
    argv += ["-p", str(relay.port), "-l", relay.user, "-W", "%h:%p", "--", relay.host]
    return shlex.join(argv)


def relay_master(relay: Relay, key: str | None) -> Connection:
    """The laptop's one login to a relay (as that account, with that key), kept as a master:
    every hop through the relay is then a channel in it (`-W`, one round trip, no second key
    exchange). Not persistent: it lasts while a box's connection goes through it, and 60 s more."""
    options = [
        ("User", relay.user),
        ("StrictHostKeyChecking", "accept-new"),
        ("UserKnownHostsFile", str(relay_known_hosts_path())),
    ]
    if key:
        options.append(("IdentityFile", key))
    target = Target(label=f"the relay {relay}", destination=relay.host, port=relay.port, options=tuple(options))
    return Connection(target, control_dir=paths.runtime_dir(), timeout=RELAY_TIMEOUT, batch=True, persist=False)


def render_config(all_profiles: dict[str, Profile], last: dict[str, LastPath]) -> str:
    lines = [
        "# Written by nbremote from its host profiles (`nbremote hosts`); edits here are lost.",
        "# HostName is the address `nbremote up`/`ssh` last reached the host by.",
    ]
    for name in sorted(all_profiles):
        profile = all_profiles[name]
        endpoints = profile.endpoints()
        recent = last.get(name)
        address = next((a for a in endpoints if recent and str(a) == recent.address), endpoints[0])
        lines += ["", f"Host {name}"]
        for key, value in connection_options(profile, address):
            lines.append(f"    {key} {_quote(Path(value)) if key in ('IdentityFile', 'UserKnownHostsFile') else value}")
    return "\n".join(lines) + "\n"


def render_known_hosts(old: str, alias: str, keys: list[tuple[str, str]] | None) -> str:
    """Our known_hosts with the keys of `alias` replaced (keys=None: removed)."""
    kept = [line for line in old.splitlines() if line.split(" ", 1)[0] != alias]
    kept += [f"{alias} {kind} {blob}" for kind, blob in keys or []]
    return "".join(line + "\n" for line in kept)


def write_files(
    all_profiles: dict[str, Profile], *, alias: str | None = None, keys: list[tuple[str, str]] | None = None
) -> None:
    """Rewrite our ssh_config (and the pins of `alias`) from the profiles."""
    folder = paths.config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if alias is not None:
        try:
            old = known_hosts_path().read_text()
        except FileNotFoundError:
            old = ""
        paths.write_private(known_hosts_path(), render_known_hosts(old, alias, keys))
    paths.write_private(our_config_path(), render_config(all_profiles, profiles.last_paths()))


def refresh_config(all_profiles: dict[str, Profile]) -> None:
    """After `up` found a new path: point plain `ssh NAME` at it too (only if it changed)."""
    text = render_config(all_profiles, profiles.last_paths())
    try:
        if our_config_path().read_text() == text:
            return
    except OSError:
        pass
    if our_config_path().parent.is_dir():
        paths.write_private(our_config_path(), text)


# --- host keys -------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    address: Address
    keys: list[tuple[str, str]]  # (type, base64 blob)
    error: str | None = None


def keyscan(address: Address, timeout: float) -> Scan:
    argv = ["ssh-keyscan", "-T", str(max(1, round(timeout))), "-p", str(address.port or 22), "--", address.host]
    log.debug("run %s", shlex.join(argv))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout + 5, env=ssh_env()
        )
    except subprocess.TimeoutExpired:
        return Scan(address, [], f"no answer after {timeout:g} s")
    keys = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#") and fields[1] in KEY_TYPES:
            try:
                base64.b64decode(fields[2], validate=True)
            except binascii.Error:
                continue
            keys.append((fields[1], fields[2]))
    keys.sort(key=lambda k: KEY_TYPES.index(k[0]))
    if keys:
        return Scan(address, keys)
    reason = "no ssh server answered" if not done.stderr.strip() else done.stderr.strip().splitlines()[-1]
    return Scan(address, [], reason)


def relay_reason(stderr: str, relay: Relay, tunnel: int | None) -> str | None:
    """Why the hop through `relay` failed, from ssh's stderr; None when the hop itself worked."""
    text = stderr
    if str(relay_known_hosts_path()) in text and "IDENTIFICATION HAS CHANGED" in text:
        return (
            f"the relay {relay.host}'s own host key has changed (if that is expected, remove its line "
            f"from {relay_known_hosts_path()})"
        )
    # The hop names the relay as given on its command line; the box's own refusal names the profile.
    if f"{relay.user}@{relay.host}: Permission denied" in text:
        return f"the relay {relay.host} refused {relay.user}'s key"
    if "open failed" in text or "stdio forwarding failed" in text:
        return f"nothing answers on the relay's port {tunnel}: is `nbremote server relay` running on the box?"
    match = re.search(r"ssh: connect to host \S+ port \d+: ([^\r\n]+)", text)
    if match or "Could not resolve hostname" in text:
        return f"cannot reach the relay {relay.host}:{relay.port} ({match.group(1) if match else 'name not found'})"
    return None


def probe_hop(proxy: str, address: Address, timeout: float) -> str:
    """What the hop to a relay says on its own (its stderr), for an error message."""
    argv = [arg.replace("%h", address.host).replace("%p", str(address.port)) for arg in shlex.split(proxy)]
    # Its own login, not a channel in a master to the relay, whose words go to no one (first value wins).
    argv[1:1] = ["-o", "ControlPath=none"]
    log.debug("run %s", shlex.join(argv))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout + 10, env=ssh_env()
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stderr


def scan_via(address: Address, timeout: float, key: str | None = None) -> Scan:
    """The host key behind a relay: ssh-keyscan cannot hop, so one key exchange with no login.

    The key is written to a throw-away known_hosts (accept-new) and read back;
    the caller pins it only if it matches the invite's fingerprint.
    """
    assert address.via is not None
    import tempfile  # imported where used: kept out of `up HOST`'s start-up

    with tempfile.TemporaryDirectory(prefix="nbremote-scan-") as tmp:
        known = Path(tmp) / "known_hosts"
        argv = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, round(timeout))}",
            "-o",
            "PreferredAuthentications=none",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "HostKeyAlias=scan",
            "-o",
            "ControlPath=none",
            "-o",
            f"ProxyCommand={proxy_command(address.via, key)}",  # the key `add --key` was given logs in to the relay
            "-p",
            str(address.port),
            "--",
            address.host,
            "true",
        ]
        log.debug("run %s", shlex.join(argv))
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout + 10, env=ssh_env()
            )
        except subprocess.TimeoutExpired:
            return Scan(address, [], f"no answer after {timeout:g} s")
        keys = []
        for line in (known.read_text() if known.exists() else "").splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] in KEY_TYPES:
                keys.append((fields[1], fields[2]))
    if keys:
        return Scan(address, keys)
    reason = relay_reason(done.stderr, address.via, address.port)
    lines = done.stderr.strip().splitlines()
    return Scan(address, [], reason or (lines[-1] if lines else "no ssh server answered"))


def scan_all(addresses: list[Address], timeout: float, key: str | None = None) -> list[Scan]:
    from concurrent.futures import ThreadPoolExecutor  # it imports logging: see nbremote.logs

    with ThreadPoolExecutor(max_workers=max(1, len(addresses))) as pool:
        return list(pool.map(lambda a: scan_via(a, timeout, key) if a.via else keyscan(a, timeout), addresses))


# --- the user's key --------------------------------------------------------------


def find_key() -> Path | None:
    for name in DEFAULT_KEYS:
        key = ssh_dir() / name
        if key.is_file() and key.with_name(name + ".pub").is_file():
            return key
    return None


def check_key(path: Path) -> Path:
    if not path.is_file() or not Path(f"{path}.pub").is_file():
        raise NbremoteError(
            f"no key pair at {path} (it needs {path}.pub beside it)",
            hint="leave --key out and nbremote makes one",
            exit_code=ExitCode.USAGE,
        )
    return path


def generate_key(interactive: bool) -> Path:
    """A new ed25519 key; on a terminal ssh-keygen asks for the passphrase itself."""
    folder = ssh_dir()
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "id_ed25519"
    import socket  # imported where used: kept out of `up HOST`'s start-up

    argv = [
        "ssh-keygen",
        "-t",
        "ed25519",
        "-f",
        str(path),
        "-C",
        f"{os.environ.get('USER', 'me')}@{socket.gethostname()}",
    ]
    if not interactive:
        argv += ["-q", "-N", ""]  # no one to type a passphrase
    log.debug("run %s", shlex.join(argv))
    done = subprocess.run(
        argv, stdin=None if interactive else subprocess.DEVNULL, capture_output=not interactive, text=True
    )
    if done.returncode != 0:
        raise NbremoteError(
            f"ssh-keygen could not make {path}",
            exit_code=ExitCode.ERROR,
            details=(done.stderr or "").strip().splitlines()[-3:],
        )
    return path


# Run by the login shell of the server user, the key line on stdin. Like ssh-copy-id:
# ~/.ssh 700 and authorized_keys 600 (sshd's StrictModes refuses looser ones), the key
# added only when absent, a final newline supplied if the file lacked one, SELinux
# contexts restored where that tool exists.
INSTALL_SCRIPT = r"""
umask 077
IFS= read -r key || exit 3
blob=$(printf '%s\n' "$key" | cut -d' ' -f2)
[ -n "$blob" ] || exit 3
mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" || exit 4
f="$HOME/.ssh/authorized_keys"
[ -f "$f" ] || : > "$f" || exit 4
chmod 600 "$f" || exit 4
if ! grep -qF -- "$blob" "$f"; then
  if [ -s "$f" ] && [ -n "$(tail -c 1 "$f")" ]; then echo >> "$f"; fi
  printf '%s\n' "$key" >> "$f" || exit 4
fi
command -v restorecon >/dev/null 2>&1 && restorecon -F "$HOME/.ssh" "$f" >/dev/null 2>&1
exit 0
"""


def install_command() -> str:
    return "sh -c " + shlex.quote(INSTALL_SCRIPT)
