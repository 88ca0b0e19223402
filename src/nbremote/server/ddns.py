"""A DNS name that follows this network's WAN address: RFC 2136 updates signed with TSIG.

The DNS work is dnspython's (messages, TSIG, transport); this module reads the
key file, finds the zone, sends one update when the WAN address differs from
the last one sent, and turns each way the server can say no into an error
that names the fix. Nothing here finds the WAN address: the caller passes the
function that does (`server wan-ip`'s, the router first).

The record of the last update (ddns.json in the server's state folder) is what
"only on change" compares against, and what `server invite` reads to put the
name first among the WAN addresses.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import pwd
import re
import shlex
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nbremote.addresses import Address, is_host, parse_address
from nbremote.errors import ExitCode, NbremoteError
from nbremote.server import system
from nbremote.server.files import atomic_write

RECORD = "ddns.json"
DEFAULT_TTL = 60  # seconds: resolvers forget the old address within a minute of an update
DEFAULT_PERIOD = 300.0
DNS_PORT = 53
# What tsig-keygen writes and dnspython signs with; hmac-md5 is left out on purpose.
ALGORITHMS = ("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")
KEYGEN = "tsig-keygen -a hmac-sha256 NAME > FILE"

_KEY = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM = re.compile(r"\balgorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;")
_SECRET = re.compile(r'\bsecret\s+"([^"]*)"\s*;')
# Quoted strings are matched first and kept: a base64 secret may hold "//".
_COMMENTS = re.compile(r'("[^"]*")|(?:#|//)[^\n]*|/\*.*?\*/', re.S)


def _dns() -> Any:
    try:
        import dns.exception  # noqa: F401 - the submodules are what the rest of this module uses
        import dns.flags
        import dns.message
        import dns.query
        import dns.rcode
        import dns.rdatatype
        import dns.tsig
        import dns.tsigkeyring
        import dns.update
    except ImportError:
        raise NbremoteError(
            "the DNS library is not installed", hint="pip install 'nbremote[server]' (it adds dnspython)"
        ) from None
    return dns


# ---------------------------------------------------------------- inputs, checked at the edge


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str  # base64, as in the file

    def keyring(self) -> dict[Any, Any]:
        return dict(_dns().tsigkeyring.from_text({self.name: (self.algorithm, self.secret)}))


def parse_key(text: str, where: str) -> TsigKey:
    """The one key in a BIND `key "NAME" { algorithm …; secret "…"; };` file, as tsig-keygen writes it."""
    keys = _KEY.findall(_COMMENTS.sub(lambda m: m.group(1) or "", text))
    if len(keys) != 1:
        raise NbremoteError(
            f"{where} holds {'no' if not keys else len(keys)} TSIG key{'s' if len(keys) > 1 else ''} in BIND's format",
            hint=f"give a file with one key, as `{KEYGEN}` writes it (the same key the DNS server has)",
            exit_code=ExitCode.USAGE,
        )
    name, body = keys[0]
    algorithm, secret = _ALGORITHM.search(body), _SECRET.search(body)
    if algorithm is None or algorithm.group(1).lower() not in ALGORITHMS:
        found = algorithm.group(1) if algorithm else "none"
        raise NbremoteError(
            f"the TSIG key in {where} has algorithm {found}, not one of {', '.join(ALGORITHMS)}",
            hint=f"make a new key with `{KEYGEN}` and give it to the DNS server too",
            exit_code=ExitCode.USAGE,
        )
    try:
        raw = base64.b64decode(secret.group(1), validate=True) if secret else b""
    except binascii.Error:
        raw = b""
    if not raw:
        raise NbremoteError(
            f"the TSIG key in {where} has no secret in base64",
            hint=f"make a new key with `{KEYGEN}` and give it to the DNS server too",
            exit_code=ExitCode.USAGE,
        )
    assert secret is not None
    return TsigKey(name, algorithm.group(1).lower(), secret.group(1))


def read_key(path: Path, euid: int | None = None) -> TsigKey:
    """The key file's key, once the file is shown to be private: the key can rewrite the name."""
    euid = os.geteuid() if euid is None else euid
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise NbremoteError(
            f"cannot read the TSIG key file {path}: {exc.strerror}",
            hint=f"give the key file the DNS server's key came from (`{KEYGEN}` writes one)",
            exit_code=ExitCode.USAGE,
        ) from None
    if st.st_uid not in (0, euid):
        raise NbremoteError(
            f"the TSIG key file {path} belongs to {_owner(st.st_uid)}: anyone who can change it can move the name",
            hint=f"sudo chown root: {shlex.quote(str(path))}",
            exit_code=ExitCode.USAGE,
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise NbremoteError(
            f"the TSIG key file {path} is mode {stat.S_IMODE(st.st_mode):04o}: others can read the key",
            hint=f"chmod 600 {shlex.quote(str(path))}",
            exit_code=ExitCode.USAGE,
        )
    return parse_key(text, str(path))


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_name(text: str) -> str:
    """A fully qualified DNS name, lowercase, without the final dot."""
    name = text.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(name)
        address = True
    except ValueError:
        address = False
    if address or "." not in name or not is_host(name) or "_" in name:
        raise NbremoteError(
            f"{text!r} is not a DNS name to point at this machine",
            hint="give a fully qualified name in a zone the DNS server is primary for, like gpubox.example.org",
            exit_code=ExitCode.USAGE,
        )
    return name


def check_zone(name: str, zone: str) -> str:
    zone = zone.strip().rstrip(".").lower()
    if not zone or not is_host(zone) or not (name == zone or name.endswith(f".{zone}")):
        raise NbremoteError(
            f"{name} is not inside the zone {zone!r}",
            hint="give the zone the name belongs to (or leave --zone out: the DNS server's SOA says it)",
            exit_code=ExitCode.USAGE,
        )
    return zone


def parse_server(text: str) -> Address:
    """address[:port] of the DNS server; port 53 when not given."""
    return parse_address(text).with_port(DNS_PORT)


@dataclass(frozen=True)
class Plan:
    name: str
    server: Address
    key: TsigKey
    zone: str | None = None  # None: found from the server's SOA
    ttl: int = DEFAULT_TTL
    timeout: float = 5.0


# ---------------------------------------------------------------- talking to the DNS server


def _exchange(plan: Plan, message: Any) -> Any:
    """Send one message (UDP, TCP when the answer is truncated); the server's answer or a clear error."""
    dns = _dns()
    where = str(plan.server)
    try:
        answer, _tcp = dns.query.udp_with_fallback(
            message, _server_ip(plan.server.host), timeout=plan.timeout, port=plan.server.port
        )
    except dns.exception.Timeout:
        raise NbremoteError(
            f"no answer from the DNS server {where} after {plan.timeout:g} s",
            hint="check its address and port, and that this machine can reach it (UDP and TCP port "
            f"{plan.server.port}); nothing was changed",
            exit_code=ExitCode.UNREACHABLE,
        ) from None
    except OSError as exc:
        raise NbremoteError(
            f"cannot reach the DNS server {where}: {exc.strerror or exc}",
            hint="check its address and port, and that it is running; nothing was changed",
            exit_code=ExitCode.UNREACHABLE,
        ) from None
    except dns.tsig.PeerBadKey:
        raise NbremoteError(
            f"the DNS server {where} does not know the TSIG key {plan.key.name} (BADKEY)",
            hint="the key's name and algorithm must be those of a `key` statement in the server's "
            "configuration, granted the name in its update-policy; nothing was changed",
            exit_code=ExitCode.AUTH_FAILED,
        ) from None
    except dns.tsig.PeerBadSignature:
        raise NbremoteError(
            f"the DNS server {where} refused the signature of the TSIG key {plan.key.name} (BADSIG)",
            hint="the secret differs from the server's key of that name: copy the key file the server "
            "uses; nothing was changed",
            exit_code=ExitCode.AUTH_FAILED,
        ) from None
    except dns.tsig.PeerBadTime:
        raise NbremoteError(
            f"the DNS server {where} refused the update's time (BADTIME)",
            hint="TSIG allows five minutes between the two clocks: set this machine's clock (NTP); nothing was changed",
            exit_code=ExitCode.AUTH_FAILED,
        ) from None
    except dns.exception.DNSException as exc:
        raise NbremoteError(
            f"the DNS server {where} gave an answer that cannot be trusted: {exc}",
            hint="is it a DNS server, and the one that has this key? nothing was changed",
        ) from None
    return answer


def _server_ip(host: str) -> str:
    """The DNS server's address: dnspython sends to addresses only, so a name is resolved here."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, DNS_PORT, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise NbremoteError(
            f"cannot find the address of the DNS server {host}: {exc.strerror}",
            hint="check the name, or give the server's address; nothing was changed",
            exit_code=ExitCode.UNREACHABLE,
        ) from None
    return str(found[0][4][0])


def find_zone(plan: Plan) -> str:
    """The zone the name is in, from the server's SOA (the answer's, or the authority's of a negative one)."""
    dns = _dns()
    query = dns.message.make_query(plan.name + ".", dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD  # an authoritative server's own answer, not a recursive one
    answer = _exchange(plan, query)
    rcode = answer.rcode()
    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        for rrset in answer.answer + answer.authority:
            if rrset.rdtype == dns.rdatatype.SOA and (answer.flags & dns.flags.AA):
                return str(rrset.name).rstrip(".").lower()
    raise NbremoteError(
        f"the DNS server {plan.server} is not authoritative for {plan.name} "
        f"(its answer to the SOA query: {dns.rcode.to_text(rcode)}, no SOA of its own)",
        hint="give the server that is primary for the name's zone (the one its update-policy is on), "
        "or the zone with --zone; nothing was changed",
    )


def send_update(plan: Plan, zone: str, address: str) -> None:
    """Replace the name's A (or AAAA) records with address, signed with the key."""
    dns = _dns()
    rdtype = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    update = dns.update.UpdateMessage(
        zone + ".", keyring=plan.key.keyring(), keyname=plan.key.name, keyalgorithm=plan.key.algorithm
    )
    update.replace(plan.name + ".", plan.ttl, rdtype, address)
    answer = _exchange(plan, update)
    rcode = answer.rcode()
    if rcode == dns.rcode.NOERROR:
        return
    if rcode == dns.rcode.NOTAUTH:
        raise NbremoteError(
            f"the DNS server {plan.server} is not authoritative for the zone {zone} (NOTAUTH)",
            hint="send the update to the zone's primary server, and check --zone; nothing was changed",
        )
    if rcode == dns.rcode.REFUSED:
        raise NbremoteError(
            f"the DNS server {plan.server} refused the update of {plan.name} in {zone} (REFUSED)",
            hint=f"its zone {zone} needs `update-policy {{ grant {plan.key.name} name {plan.name}. A AAAA; }};` "
            "and must be one it is primary for; nothing was changed",
        )
    raise NbremoteError(
        f"the DNS server {plan.server} answered {dns.rcode.to_text(rcode)} to the update of {plan.name}",
        hint="its log says why; nothing was changed",
    )


# ---------------------------------------------------------------- one check, and checking forever


class DdnsRecord:
    """The last update sent: name, server, zone, address and when."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def save(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(doc, indent=1).encode(), mode=0o644)


def known_name(state: Path) -> str | None:
    """The name ddns keeps pointed at this network, once an update has gone through."""
    return (DdnsRecord(state / RECORD).last() or {}).get("name")


@dataclass(frozen=True)
class Outcome:
    name: str
    address: str
    source: str  # where the WAN address came from
    updated: bool  # False: the DNS already had it (the last update sent this address)
    zone: str | None
    previous: str | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "source": self.source,
            "updated": self.updated,
            "zone": self.zone,
            "previous": self.previous,
            "seconds": round(self.seconds, 3),
        }


def check_once(
    plan: Plan,
    record: DdnsRecord,
    wan: Callable[[], tuple[str, str]],
    *,
    force: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Find the WAN address (wan() -> (address, source)); update the name when it is not the last one sent."""
    began = clock()
    address, source = wan()
    last = record.last() or {}
    same_target = last.get("name") == plan.name and last.get("server") == str(plan.server)
    previous = last.get("address") if same_target else None
    if same_target and previous == address and not force:
        return Outcome(plan.name, address, source, False, last.get("zone"), previous, clock() - began)
    zone = plan.zone or find_zone(plan)
    send_update(plan, zone, address)
    record.save({"name": plan.name, "server": str(plan.server), "zone": zone, "address": address, "at": time.time()})
    return Outcome(plan.name, address, source, True, zone, previous, clock() - began)


def keep(
    plan: Plan,
    record: DdnsRecord,
    wan: Callable[[], tuple[str, str]],
    *,
    period: float,
    on_outcome: Callable[[Outcome], None],
    on_error: Callable[[NbremoteError], None],
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> None:
    """check_once every period, forever (or `rounds` times). A DNS server or a network that does not
    answer is waited out; a server that says no (a key, a zone, a policy) stops it: waiting cannot fix that."""
    done = 0
    while rounds is None or done < rounds:
        sleep(period)
        done += 1
        try:
            on_outcome(check_once(plan, record, lambda: _waitable(wan)))
        except _Waitable as waiting:
            on_error(waiting.error)
        except NbremoteError as exc:
            if exc.exit_code != ExitCode.UNREACHABLE:
                raise
            on_error(exc)


class _Waitable(Exception):
    """The WAN address could not be found this time (the line is down, the router reboots)."""

    def __init__(self, error: NbremoteError) -> None:
        super().__init__(error.message)
        self.error = error


def _waitable(wan: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    try:
        return wan()
    except NbremoteError as exc:
        raise _Waitable(exc) from None


# ---------------------------------------------------------------- a systemd timer, where systemd runs

UNIT = "nbremote-ddns"
UNIT_DIR = Path("/etc/systemd/system")


def _systemd_word(word: str, *, command: bool = True) -> str:
    """One word of a unit file's line: systemd expands % (and $ in a command) and splits on spaces unless quoted."""
    word = word.replace("%", "%%")
    if command:
        word = word.replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_files(command: list[str], *, name: str, period: float, state_dir: Path | None) -> dict[str, str]:
    """The service (one check) and the timer (at boot, then every period): {file name: text}."""
    header = "# Written by `nbremote server ddns --install-timer`; `--remove-timer` takes it out.\n"
    environment = (
        f"Environment={_systemd_word(f'NBREMOTE_STATE_DIR={state_dir}', command=False)}\n" if state_dir else ""
    )
    service = (
        f"{header}[Unit]\n"
        f"Description=nbremote: point {name} at this network's WAN address\n"
        "Wants=network-online.target\nAfter=network-online.target\n\n"
        "[Service]\nType=oneshot\n"
        f"{environment}"
        f"ExecStart={' '.join(_systemd_word(w) for w in command)}\n"
    )
    timer = (
        f"{header}[Unit]\n"
        f"Description=nbremote: check every {period:g} s that {name} points at this network\n\n"
        "[Timer]\nOnBootSec=30s\n"
        f"OnUnitActiveSec={period:g}s\n"
        "AccuracySec=1s\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


def systemd_runs(root: Path = Path("/")) -> bool:
    """systemd is PID 1 (its own test, as sd_booted() does it)."""
    return (root / "run/systemd/system").is_dir()


def _systemctl(run: system.Runner, *args: str) -> None:
    argv = ["systemctl", *args]
    done = run(argv)
    if done.returncode != 0:
        raise NbremoteError(
            f"`{shlex.join(argv)}` failed",
            details=done.stderr.splitlines(),
            hint="`journalctl -u nbremote-ddns` says more; the unit files are in /etc/systemd/system",
        )


def _no_systemd() -> NbremoteError:
    return NbremoteError(
        "systemd does not run on this machine: no timer to install",
        hint="keep it running with `nbremote server ddns NAME … --keep` (in tmux, or from the init "
        "system this machine has), or run it from cron without --keep",
    )


def require_systemd(root: Path = Path("/")) -> None:
    if not systemd_runs(root):
        raise _no_systemd()


def install_timer(
    files: dict[str, str], *, run: system.Runner = system.run, root: Path = Path("/"), unit_dir: Path = UNIT_DIR
) -> list[Path]:
    """Write the unit files and start the timer; the paths written."""
    require_systemd(root)
    written = []
    for file_name, text in files.items():
        path = unit_dir / file_name
        atomic_write(path, text.encode(), mode=0o644)
        written.append(path)
    _systemctl(run, "daemon-reload")
    _systemctl(run, "enable", "--now", f"{UNIT}.timer")
    return written


def remove_timer(*, run: system.Runner = system.run, root: Path = Path("/"), unit_dir: Path = UNIT_DIR) -> list[Path]:
    """Stop the timer and delete its files; the paths removed (none when it was not installed)."""
    paths = [unit_dir / f"{UNIT}.timer", unit_dir / f"{UNIT}.service"]
    present = [p for p in paths if p.exists()]
    if not present:
        return []
    if not systemd_runs(root):
        raise _no_systemd()
    _systemctl(run, "disable", "--now", f"{UNIT}.timer")
    for path in present:
        path.unlink()
    _systemctl(run, "daemon-reload")
    return present
