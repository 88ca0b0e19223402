"""`nbremote doctor`: is this laptop ready, and does each host answer? With the fix for each problem.

Nothing is changed, except that a login records the address that answered, as
`up` does. The local checks read files and run `ssh -V`, `ssh -G` and `ssh-add
-l`, none of which connects anywhere; the host checks log in with keys only
(BatchMode: never a prompt) and ask the agent one question, all hosts at once,
so a dead host costs the timeout and not more. Rows are the same Check as
`nbremote server check`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nbremote import paths, profiles, remote, sshfiles
from nbremote.errors import NbremoteError
from nbremote.profiles import Profile
from nbremote.verdicts import FAIL, PASS, WARN, Check
from nbremote.ssh import ssh_env

# Include in ssh_config came with 7.3 (our one line in ~/.ssh/config needs it);
# ControlPersist and `-O forward`/`-O cancel` are older.
MIN_OPENSSH = (7, 3)
# A Unix socket path has 108 bytes on Linux, 104 on macOS and the BSDs, final NUL included.
SOCKET_PATH_MAX = 108 if sys.platform.startswith("linux") else 104
# ssh binds a control socket under its final name plus "." and 16 random characters, then renames it.
CONTROL_TEMP_SUFFIX = 17
CONTROL_NAME_LENGTH = 20  # ssh.Connection names its sockets by 20 hex digits


def _run(argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=ssh_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


# --- OpenSSH -----------------------------------------------------------------------------


def ssh_version() -> str | None:
    """What `ssh -V` says, or None when there is no ssh on PATH."""
    done = _run(["ssh", "-V"]) if shutil.which("ssh") else None
    if done is None:
        return None
    lines = (done.stderr + done.stdout).strip().splitlines()
    return lines[0] if lines else ""


def parse_openssh_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"OpenSSH_(?:for_Windows_)?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def openssh_check(version_text: str | None) -> Check:
    if version_text is None:
        return Check(
            "openssh", FAIL, "no ssh on PATH", "install the OpenSSH client (`sudo apt-get install openssh-client`)"
        )
    version = parse_openssh_version(version_text)
    wanted = ".".join(map(str, MIN_OPENSSH))
    if version is None:
        return Check(
            "openssh",
            FAIL,
            f"ssh is not OpenSSH ({version_text or 'no version'})",
            f"install the OpenSSH client, {wanted} or newer: nbremote uses its ControlMaster",
        )
    if version < MIN_OPENSSH:
        return Check(
            "openssh", FAIL, f"{version_text}: older than {wanted}", f"upgrade the OpenSSH client to {wanted} or newer"
        )
    return Check("openssh", PASS, version_text.split(",")[0])


def multiplexing_check() -> Check:
    """Can ssh make its control sockets where nbremote puts them?"""
    try:
        folder = paths.runtime_dir()
    except NbremoteError as exc:
        return Check("multiplexing", FAIL, exc.message, exc.hint)
    # Bind a socket with the longest name ssh will use there: it fails for the
    # same reasons a ControlMaster would (path too long, a filesystem without sockets).
    # A random name, so two doctors at once do not collide.
    probe = folder / (secrets.token_hex(CONTROL_NAME_LENGTH // 2) + "." + "x" * (CONTROL_TEMP_SUFFIX - 1))
    length = len(os.fsencode(probe)) + 1
    if length > SOCKET_PATH_MAX:
        return Check(
            "multiplexing",
            FAIL,
            f"control sockets in {folder} need {length} bytes; a Unix socket path has {SOCKET_PATH_MAX}",
            "set XDG_RUNTIME_DIR to a shorter directory of yours",
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(probe))
    except OSError as exc:
        return Check(
            "multiplexing",
            FAIL,
            f"cannot make a control socket in {folder}: {exc.strerror or exc}",
            "set XDG_RUNTIME_DIR to a local directory of yours",
        )
    finally:
        sock.close()
        probe.unlink(missing_ok=True)
    return Check("multiplexing", PASS, f"control sockets work in {folder} (0700)")


# --- keys, profiles, ~/.ssh/config ---------------------------------------------------------


def _agent_keys() -> int:
    """How many keys ssh-agent holds (0 without an agent)."""
    if not os.environ.get("SSH_AUTH_SOCK") or not shutil.which("ssh-add"):
        return 0
    done = _run(["ssh-add", "-l"], timeout=5)
    if done is None or done.returncode != 0:
        return 0
    return len([line for line in done.stdout.splitlines() if line.strip()])


def _key_row(key: Path, users: list[str]) -> Check:
    """One key file: there, and private (ssh ignores a key that others can read)."""
    used_by = f" (used by {', '.join(users)})" if users else ""
    if not key.is_file():
        return Check(
            "key",
            FAIL,
            f"{key} is missing{used_by}",
            f"put the key back, or `nbremote remove {users[0]}` then `nbremote add {users[0]}` "
            "(makes or picks another key)"
            if users
            else None,
        )
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(
            "key", FAIL, f"{key} can be read by others (mode {mode:04o}): ssh refuses to use it", f"chmod 600 {key}"
        )
    return Check("key", PASS, f"{key}{used_by}")


def key_checks(all_profiles: dict[str, Profile]) -> list[Check]:
    """The keys the profiles name (one row per file), else the default key, else ssh-agent's."""
    users: dict[Path, list[str]] = {}
    for name, profile in sorted(all_profiles.items()):
        if profile.key is not None:
            users.setdefault(Path(profile.key).expanduser(), []).append(name)
    default = sshfiles.find_key()
    own = sum(len(names) for names in users.values())
    if default is not None and default not in users and (not all_profiles or own < len(all_profiles)):
        users[default] = []  # what ssh uses for a profile without its own key
    if users:
        return [_key_row(key, names) for key, names in users.items()]
    in_agent = _agent_keys()
    if in_agent:
        return [Check("key", PASS, f"{in_agent} in ssh-agent")]
    names = ", ".join(sshfiles.DEFAULT_KEYS)
    # Before the first `add` nothing needs a key yet, and `add` makes one.
    return [
        Check(
            "key",
            FAIL if all_profiles else WARN,
            f"no key pair in {sshfiles.ssh_dir()} ({names}) and none in ssh-agent",
            "`nbremote add NAME` makes one, or run `ssh-keygen -t ed25519`",
        )
    ]


def profiles_check() -> tuple[Check, dict[str, Profile]]:
    path = profiles.profiles_path()
    try:
        loaded = profiles.load()
    except NbremoteError as exc:
        return Check("profiles", FAIL, exc.message, exc.hint), {}
    if not path.exists():
        return Check(
            "profiles",
            WARN,
            f"no host profiles yet ({path})",
            "nbremote add NAME --address ADDR  (or --invite LINE from `nbremote server invite`)",
        ), {}
    count = len(loaded)
    return Check(
        "profiles",
        PASS if loaded else WARN,
        f"{count} host profile{'s' if count != 1 else ''} in {path}" if loaded else f"{path} has no hosts",
        None if loaded else "nbremote add NAME --address ADDR",
    ), loaded


def _is_block_start(line: str) -> bool:
    return re.match(r"\s*(host|match)(\s*=\s*|\s+)", line, re.I) is not None


def include_check(all_profiles: dict[str, Profile], ssh_works: bool) -> Check:
    """~/.ssh/config includes our ssh_config above any Host block, and ssh reads our entries."""
    config, ours, line = sshfiles.user_config_path(), sshfiles.our_config_path(), sshfiles.include_line()
    if not all_profiles:
        return Check("ssh config", PASS, "no host profiles: nothing to include yet")
    fix = f"put this line at the top of {config}: {line}"
    try:
        lines = config.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as exc:
        return Check("ssh config", FAIL, f"cannot read {config}: {exc.strerror or exc}", f"chmod 600 {config}")
    found = next((i for i, text in enumerate(lines) if text.strip() == line), None)
    if found is None:
        return Check(
            "ssh config",
            FAIL,
            f"{config} does not include {ours}: plain `ssh NAME`, scp and rsync do not know the host profiles",
            fix,
        )
    block = next((i for i, text in enumerate(lines[:found]) if _is_block_start(text)), None)
    if block is not None:
        return Check(
            "ssh config",
            FAIL,
            f"the Include at {config}:{found + 1} is inside the block that starts at "
            f"line {block + 1}: it applies only to that block",
            f"move `{line}` to the top of {config}",
        )
    if not ours.is_file():
        return Check(
            "ssh config", FAIL, f"{ours} is missing", "`nbremote remove NAME` then `nbremote add NAME` writes it again"
        )
    if ssh_works:
        missing = [
            name
            for name in sorted(all_profiles)
            if not _ssh_uses_profile(config, name, all_profiles[name].host_key_alias)
        ]
        if missing:
            return Check(
                "ssh config",
                FAIL,
                f"plain `ssh {missing[0]}` does not use nbremote's entry"
                + (f" (nor for {', '.join(missing[1:])})" if missing[1:] else "")
                + f": {ours} lacks it, or an earlier line of {config} overrides it",
                f"`nbremote remove {missing[0]}` then `nbremote add {missing[0]}` writes it again",
            )
    return Check("ssh config", PASS, f"{config}:{found + 1} includes {ours}")


def _ssh_uses_profile(config: Path, name: str, alias: str) -> bool:
    # -F names the file: ssh itself finds ~ through the password database, not $HOME.
    done = _run(["ssh", "-G", "-F", str(config), "--", name])
    return done is not None and done.returncode == 0 and f"hostkeyalias {alias}".lower() in done.stdout.lower()


# --- hosts ------------------------------------------------------------------------------


def _error_detail(exc: NbremoteError) -> str:
    return "; ".join([exc.message, *exc.details])


def host_checks(host: str, *, timeout: float) -> list[Check]:
    """Log in to HOST (keys only) and ask its agent for the Jupyter servers; a reused master is reused."""
    try:
        place = remote.place_for(host, timeout=timeout, interactive=False, persist=False)
    except NbremoteError as exc:
        return [Check(f"{host} reach", FAIL, _error_detail(exc), exc.hint)]
    if not isinstance(place, remote.Host):
        return [Check("host", FAIL, "no host name given", "name a host profile or an ssh destination")]
    had_master = place.connection.master_alive()
    started = time.monotonic()
    try:
        if had_master:
            reach = Check(f"{host} reach", PASS, "connected already (an nbremote session is open)")
        else:
            try:
                reached = place.connect()
            except NbremoteError as exc:
                return [Check(f"{host} reach", FAIL, _error_detail(exc), exc.hint)]
            seconds = time.monotonic() - started
            where = reached.describe() if reached is not None else _endpoint_text(place)
            reach = Check(f"{host} reach", PASS, f"{where}, login {seconds:.2f} s")
        began = time.monotonic()
        try:
            reply = place.agent(hello_timeout=timeout).request("ls", {}, timeout=timeout + 10)
        except NbremoteError as exc:
            return [
                reach,
                Check(
                    f"{host} agent", FAIL, _error_detail(exc), exc.hint or "run `nbremote -v ls HOST` to see each step"
                ),
            ]
        servers = reply.get("servers")
        count = len(servers) if isinstance(servers, list) else 0
        return [
            reach,
            Check(
                f"{host} agent",
                PASS,
                f"answers in {time.monotonic() - began:.2f} s; "
                f"{count} Jupyter server{'s' if count != 1 else ''} of nbremote's there",
            ),
        ]
    finally:
        if not had_master:
            place.connection.close()


def _endpoint_text(place: remote.Host) -> str:
    where = place.connection.endpoint()
    return f"{where.user}@{where.hostname}:{where.port}"


def all_host_checks(hosts: list[str], *, timeout: float) -> list[Check]:
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        results = list(pool.map(lambda h: host_checks(h, timeout=timeout), hosts))
    return [row for rows in results for row in rows]


# --- everything ------------------------------------------------------------------------


def diagnose(hosts: list[str] | None, *, timeout: float) -> list[Check]:
    """The laptop's checks, then each host's (HOSTS, or every profile) in parallel."""
    version = ssh_version()
    ssh_row = openssh_check(version)
    rows = [ssh_row]
    ssh_works = ssh_row.status == PASS
    if ssh_works:
        rows.append(multiplexing_check())
    profile_row, loaded = profiles_check()
    rows += key_checks(loaded)
    rows.append(profile_row)
    rows.append(include_check(loaded, ssh_works))
    targets = list(hosts) if hosts else sorted(loaded)
    if ssh_works:
        rows += all_host_checks(targets, timeout=timeout)
    elif targets:
        rows.append(
            Check("hosts", FAIL, f"not tried without a working ssh: {', '.join(targets)}", "fix the openssh row first")
        )
    return rows
