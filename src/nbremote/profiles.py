"""Host profiles: a TOML file in the config dir, validated on every read.

    [hosts.gpubox]
    addresses = ["192.168.1.112", "203.0.113.7:22222"]   # in order of preference
    user = "houser"
    port = 22                                             # for addresses without their own
    key = "/home/me/.ssh/id_ed25519"
    relay = "me@vps.example.org"                          # behind carrier-grade NAT: the box's relay
    tunnel = 2222                                         # its loopback port that leads to the box

    [hosts.gpubox.up]                                     # defaults for `nbremote up gpubox`
    dir = "~/projects"
    env = "torch"
    mode = "lab"
    port = 8890

    [hosts.cluster]                                       # a Slurm cluster's login node
    addresses = ["login.hpc.example.org"]
    scheduler = "slurm"                                   # up and run submit batch jobs
    node_login = "auto"                                   # ssh to the job's node: auto, yes or no

    [hosts.cluster.slurm]                                 # default batch options; --slurm overrides
    partition = "gpu"
    time = "2:00:00"
    gres = "gpu:1"                                        # or gpus = 1
    cpus = 4                                              # --cpus-per-task
    mem = "16G"
    account = "proj42"
    extra = ["--qos=normal"]                              # any other sbatch options

Errors name the file and line. `add` and `remove` edit the file through a
round-trip TOML parser (tomlkit) and write it atomically (0600): only the
tables of the profile they add, change or remove change, so the user's
comments and layout stay as written. What changes on every `up` (the last
path used) lives in the state dir instead, in hosts.json.
"""

from __future__ import annotations

import fcntl
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from nbremote import paths, slurmopts

from nbremote.addresses import Address, Relay, added_at, check_port, parse_address, parse_relay
from nbremote.servers import MODES
from nbremote.errors import ExitCode, NbremoteError

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from types import ModuleType

    from tomlkit.items import Table

# Also a valid ssh_config Host pattern and a bare-enough TOML key: no spaces,
# slashes, wildcards or shell metacharacters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
HOST_KEYS = {"addresses", "user", "port", "key", "up", "scheduler", "slurm", "node_login", "relay", "tunnel"}
NODE_LOGIN = ("auto", "yes", "no")  # nodelogin.py says what each does
UP_KEYS = {"dir", "env", "mode", "port", "keep_output"}


@dataclass(frozen=True)
class UpDefaults:
    dir: str | None = None
    env: str | None = None
    mode: str | None = None
    port: int | None = None
    keep_output: bool | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    addresses: tuple[Address, ...]
    user: str | None = None
    port: int = 22
    key: str | None = None
    up: UpDefaults = field(default_factory=UpDefaults)
    scheduler: str | None = None
    slurm_table: dict[str, object] = field(default_factory=dict, hash=False)  # as written, for dumps()
    slurm: tuple[str, ...] = ()  # the same as sbatch options
    node_login: str | None = None  # NODE_LOGIN: whether `up` tries ssh to its Slurm job's node
    relay: Relay | None = None
    tunnel: int | None = None  # the relay's loopback port that leads to this host's sshd

    @property
    def host_key_alias(self) -> str:
        # One alias for every address: the LAN and the WAN address share the pinned key.
        return f"nbremote.{self.name}"

    def endpoints(self) -> list[Address]:
        # The relay last: it costs a second login, and any direct address is better when it works.
        through = [Address("127.0.0.1", self.tunnel, self.relay)] if self.relay and self.tunnel else []
        return [a.with_port(self.port) for a in self.addresses] + through


def profiles_path() -> Path:
    return paths.config_dir() / "hosts.toml"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise NbremoteError(
            f"{name!r} is not a usable host name for a profile",
            hint="use letters, digits, '.', '_' and '-' (no spaces, slashes or shell characters), "
            "starting with a letter or digit",
            exit_code=ExitCode.USAGE,
        )
    return name


def check_user(user: str) -> str:
    if not _USER.match(user):
        raise NbremoteError(f"{user!r} is not a valid user name", exit_code=ExitCode.USAGE)
    return user


class _FileError(NbremoteError):
    pass


def _line_of(text: str, pattern: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(pattern, line):
            return number
    return None


def _where(path: Path, text: str, table: str, key: str | None = None) -> str:
    """file:line of a table header, or of a key after it (tomllib gives no positions)."""
    parts = [re.escape(p) + '|"' + re.escape(p) + '"' for p in table.split(".")]
    header = r"\s*\[\s*" + r"\s*\.\s*".join(f"(?:{p})" for p in parts) + r"\s*\]"
    start = _line_of(text, header) or 1
    line = start
    if key is not None:
        rest = "\n".join(text.splitlines()[start:])
        found = _line_of(rest, rf"\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        line = start + found if found else start
    return f"{path}:{line}"


def _bad(path: Path, text: str, table: str, key: str | None, message: str) -> NbremoteError:
    return _FileError(
        f"{_where(path, text, table, key)}: {message}",
        hint="fix the file, or remove the host with `nbremote remove`",
        exit_code=ExitCode.USAGE,
    )


def _profile(name: str, doc: object, path: Path, text: str) -> Profile:
    table = f"hosts.{name}"
    if not isinstance(doc, dict):
        raise _bad(path, text, "hosts", name, f"hosts.{name} must be a table")
    try:
        check_name(name)
    except NbremoteError as exc:
        raise _bad(path, text, table, None, exc.message) from None
    unknown = sorted(set(doc) - HOST_KEYS)
    if unknown:
        raise _bad(
            path,
            text,
            table,
            unknown[0],
            f"unknown key {unknown[0]!r} in [{table}] (known: {', '.join(sorted(HOST_KEYS))})",
        )

    def field_error(key: str, exc: NbremoteError, sub: str = "") -> NbremoteError:
        return _bad(path, text, table + sub, key, exc.message)

    raw = doc.get("addresses")
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) for a in raw):
        raise _bad(path, text, table, "addresses", "addresses must be a non-empty list of strings")
    try:
        addresses = tuple(parse_address(a) for a in raw)
    except NbremoteError as exc:
        raise field_error("addresses", exc) from None
    user = doc.get("user")
    if user is not None:
        try:
            check_user(user if isinstance(user, str) else repr(user))
        except NbremoteError as exc:
            raise field_error("user", exc) from None
    try:
        port = check_port(doc.get("port", 22))
    except NbremoteError as exc:
        raise field_error("port", exc) from None
    key = doc.get("key")
    if key is not None and (not isinstance(key, str) or not key):
        raise _bad(path, text, table, "key", "key must be the path of a private key")
    up_doc = doc.get("up", {})
    if not isinstance(up_doc, dict):
        raise _bad(path, text, table, "up", "up must be a table")
    unknown = sorted(set(up_doc) - UP_KEYS)
    if unknown:
        raise _bad(
            path,
            text,
            table + ".up",
            unknown[0],
            f"unknown key {unknown[0]!r} in [{table}.up] (known: {', '.join(sorted(UP_KEYS))})",
        )
    for name_ in ("dir", "env"):
        value = up_doc.get(name_)
        if value is not None and (not isinstance(value, str) or not value or any(ord(c) < 32 for c in value)):
            raise _bad(path, text, table + ".up", name_, f"{name_} must be a non-empty string")
    mode = up_doc.get("mode")
    if mode is not None and mode not in MODES:
        raise _bad(path, text, table + ".up", "mode", f"mode {mode!r} is not one of {', '.join(MODES)}")
    local_port = up_doc.get("port")
    if local_port is not None:
        try:
            check_port(local_port)
        except NbremoteError as exc:
            raise field_error("port", exc, ".up") from None
    keep_output = up_doc.get("keep_output")
    if keep_output is not None and not isinstance(keep_output, bool):
        raise _bad(path, text, table + ".up", "keep_output", "keep_output must be true or false")
    scheduler = doc.get("scheduler")
    if scheduler is not None and scheduler not in slurmopts.SCHEDULERS:
        raise _bad(
            path, text, table, "scheduler", f"scheduler {scheduler!r} is not one of {', '.join(slurmopts.SCHEDULERS)}"
        )
    node_login = doc.get("node_login")
    if node_login is not None and node_login not in NODE_LOGIN:
        raise _bad(path, text, table, "node_login", f"node_login {node_login!r} is not one of {', '.join(NODE_LOGIN)}")
    slurm_doc = doc.get("slurm", {})
    if not isinstance(slurm_doc, dict):
        raise _bad(path, text, table, "slurm", "slurm must be a table")
    try:
        slurm = tuple(slurmopts.from_profile(slurm_doc))
    except ValueError as exc:
        raise _bad(path, text, table + ".slurm", exc.args[0], exc.args[1]) from None
    relay, tunnel = doc.get("relay"), doc.get("tunnel")
    if (relay is None) != (tunnel is None):
        raise _bad(
            path,
            text,
            table,
            "tunnel" if relay is None else "relay",
            "relay and tunnel go together: the relay's USER@HOST[:PORT] and its loopback port",
        )
    if relay is not None:
        try:
            relay = parse_relay(relay if isinstance(relay, str) else repr(relay))
            tunnel = check_port(tunnel, "tunnel")
        except NbremoteError as exc:
            raise field_error("relay", exc) from None
    return Profile(
        name=name,
        addresses=addresses,
        user=user,
        port=port,
        key=key,
        relay=relay,
        tunnel=tunnel,
        up=UpDefaults(
            dir=up_doc.get("dir"), env=up_doc.get("env"), mode=mode, port=local_port, keep_output=keep_output
        ),
        scheduler=scheduler,
        node_login=node_login,
        slurm_table=dict(slurm_doc),
        slurm=slurm,
    )


def _toml() -> ModuleType:
    """The TOML reader, imported when a file is read (it imports typing): a command on a
    machine without profiles, `up ssh://...` among them, never pays for it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the same parser, before it joined the standard library
        import tomli as tomllib
    return tomllib


def load(path: Path | None = None) -> dict[str, Profile]:
    """Every profile, or an error naming file and line; a missing file is no profiles."""
    path = path or profiles_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise NbremoteError(f"cannot read {path}: {exc}", exit_code=ExitCode.ERROR) from None
    tomllib = _toml()
    try:
        doc = _toml().loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise NbremoteError(f"{where}: {exc}", hint="fix the TOML syntax there", exit_code=ExitCode.USAGE) from None
    unknown = sorted(set(doc) - {"hosts"})
    if unknown:
        line = _line_of(text, r"\s*\[?\s*" + re.escape(unknown[0])) or 1
        raise NbremoteError(
            f"{path}:{line}: unknown key {unknown[0]!r} (only [hosts.NAME] tables belong here)",
            exit_code=ExitCode.USAGE,
        )
    hosts = doc.get("hosts", {})
    if not isinstance(hosts, dict):
        raise NbremoteError(f"{path}: hosts must be a table", exit_code=ExitCode.USAGE)
    return {name: _profile(name, value, path, text) for name, value in hosts.items()}


def find(name: str) -> Profile | None:
    """The profile called `name`, without reading the file for things that cannot be one."""
    if not _NAME.match(name):
        return None
    return load().get(name)


def up_defaults(host: str | None) -> UpDefaults:
    """What `up` and `down` use for the options left out: the profile's, if HOST is one."""
    profile = find(host) if host else None
    return profile.up if profile is not None else UpDefaults()


# --- writing ------------------------------------------------------------------

HEADER = (
    "# nbremote host profiles: `nbremote add` and `nbremote remove` edit this file.\n"
    "# Hand edits and comments are kept.\n"
)


def _set(table: Table, key: str, value: object, keep_default: object = None) -> None:
    """Set key to value in place (None takes it out); an equal value is left untouched, as written."""
    if value is None or (key not in table and value == keep_default):
        if value is None:
            table.pop(key, None)
        return
    if key not in table or table[key].unwrap() != value:
        table[key] = value


def _sub(table: Table, key: str, values: dict[str, object]) -> None:
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        table.pop(key, None)
        return
    if key not in table:
        import tomlkit

        table[key] = tomlkit.table()
    sub = table[key]
    for old in [k for k in sub if k not in values]:
        del sub[old]
    for k, v in values.items():
        _set(sub, k, v)


def _write_profile(table: Table, p: Profile, new: bool) -> None:
    _set(table, "addresses", [str(a) for a in p.addresses])
    _set(table, "user", p.user)
    # A hand-written profile without `port` means 22: it is not added.
    _set(table, "port", p.port, keep_default=None if new else 22)
    _set(table, "key", p.key)
    _set(table, "scheduler", p.scheduler)
    _set(table, "node_login", p.node_login)
    _set(table, "relay", None if p.relay is None else str(p.relay))
    _set(table, "tunnel", p.tunnel)
    _sub(table, "up", vars(p.up))
    _sub(table, "slurm", p.slurm_table)


def dumps(profiles: dict[str, Profile], text: str = "") -> str:
    """The profiles file holding `profiles`, made by editing `text` (the file as it is).

    Tables of profiles that did not change are kept byte for byte, with their comments.
    """
    import tomlkit  # the round-trip parser only writes; reading (every command) uses tomllib

    doc = tomlkit.parse(text) if text.strip() else tomlkit.parse(HEADER)
    if "hosts" not in doc:
        doc["hosts"] = tomlkit.table(is_super_table=True)
    hosts = doc["hosts"]
    current = _profiles_of(text) if text.strip() else {}
    removed = [name for name in hosts if name not in profiles]
    for name in removed:
        del hosts[name]
    for name in sorted(profiles, key=lambda n: (n not in hosts, n)):
        profile = profiles[name]
        if current.get(name) == profile:
            continue
        if name in hosts:
            _write_profile(hosts[name], profile, new=False)
        else:
            table = tomlkit.table()
            _write_profile(table, profile, new=True)
            hosts[name] = table
    out = tomlkit.dumps(doc)
    # The blank line that set a removed last table apart from the one before stays behind.
    return out.rstrip("\n") + "\n" if removed else out


def _profiles_of(text: str) -> dict[str, Profile]:
    doc = _toml().loads(text)
    hosts = doc.get("hosts", {})
    return {name: _profile(name, value, Path("hosts.toml"), text) for name, value in hosts.items()}


def save(profiles: dict[str, Profile], path: Path | None = None) -> None:
    path = path or profiles_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    paths.write_private(path, dumps(profiles, text))


def replace_addresses(
    name: str, changes: list[tuple[Address | None, Address]], path: Path | None = None
) -> list[tuple[Address | None, Address]]:
    """Put each change's new address in place of its old one in profile `name` (old None: added
    after the LAN entries), in the file as it is now; the rest of the file, comments in the
    list included, stays byte for byte.

    Returns the changes made: one whose old address is no longer there (the file was
    edited meanwhile) is left out, and an unreadable file is left alone (its error shows
    on the next command that reads it)."""
    path = path or profiles_path()
    # status asks every host at once: two refreshes must not each write the file they read.
    with _refreshing, open(paths.state_dir() / "hosts.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _replace(name, changes, path)


_refreshing = threading.Lock()


def _replace(
    name: str, changes: list[tuple[Address | None, Address]], path: Path
) -> list[tuple[Address | None, Address]]:
    import tomlkit  # the round-trip parser only writes (see dumps)

    try:
        text = path.read_text()
        load(path)
    except (OSError, NbremoteError):
        return []
    doc = tomlkit.parse(text)
    listed = doc["hosts"][name]["addresses"] if name in doc.get("hosts", {}) else []
    made: list[tuple[Address | None, Address]] = []
    for old, new in changes:
        shown = [str(a) for a in listed]
        if old is None and str(new) not in shown:
            listed.insert(added_at([parse_address(a) for a in shown]), str(new))
            made.append((old, new))
        elif old is not None and str(old) in shown:
            listed[shown.index(str(old))] = str(new)
            made.append((old, new))
    if made:
        out = tomlkit.dumps(doc)
        _profiles_of(out)  # what goes back must load: never a file the next command refuses
        paths.write_private(path, out)
    return made


# --- the last path used (state, not config) --------------------------------------


@dataclass(frozen=True)
class LastPath:
    address: str
    kind: str
    rtt_ms: float | None
    login_s: float
    when: float


def _state_path() -> Path:
    return paths.state_dir() / "hosts.json"


def last_paths() -> dict[str, LastPath]:
    return paths.read_records(paths.state_file("hosts.json"), LastPath)


def record_path(name: str, path: LastPath) -> None:
    records = last_paths()
    records[name] = path
    paths.write_private(_state_path(), json.dumps({k: vars(v) for k, v in records.items()}, indent=1))


def forget_path(name: str) -> None:
    records = last_paths()
    if records.pop(name, None) is not None:
        paths.write_private(_state_path(), json.dumps({k: vars(v) for k, v in records.items()}, indent=1))
