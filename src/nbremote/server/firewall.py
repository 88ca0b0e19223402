"""The inbound firewall: the ssh port open, everything else new from outside dropped.

Jupyter never gets a port: it listens on 127.0.0.1 and is reached through the
ssh tunnel, so opening it would only expose its token page to the network.

Backends, first supported wins: ufw when it is the active firewall (adding
nft rules behind its back would confuse its owner), else nftables, else
iptables. Each tags what it adds so `--remove` takes out exactly that.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nbremote.errors import NbremoteError
from nbremote.server import netinfo, rootcmd, system
from nbremote.verdicts import FAIL, PASS, SKIP, WARN, Check
from nbremote.server.files import Backup, Original, Transaction, atomic_write

TABLE = "nbremote"
BEGIN = "# BEGIN nbremote: written by `nbremote server firewall`; `--remove` deletes this block"
END = "# END nbremote"
WHY_NO_JUPYTER = (
    "no Jupyter port opened: Jupyter listens on 127.0.0.1 and is reached through "
    "the ssh tunnel, so an open port would only show its login page to the network"
)


def nft_table(port: int, also: tuple[int, ...] = ()) -> str:
    """Our table. Established traffic first so the ssh session that runs this survives.
    `also`: ports kept open for the moment harden moves sshd from one to the other."""
    ports = ", ".join(str(p) for p in (port, *also))
    return (
        f"table inet {TABLE} {{\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter - 1; policy drop;\n"
        "\t\tct state established,related accept\n"
        "\t\tct state invalid drop\n"
        '\t\tiif "lo" accept\n'
        "\t\tmeta l4proto { icmp, ipv6-icmp } accept\n"
        # Replies to UPnP discovery (sent to a multicast address, so conntrack
        # cannot tie them to it) come from the router: private sources only.
        "\t\tip saddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } udp sport 1900 accept\n"
        # The same over IPv6 (expose's search for the router's pinhole service goes out from
        # the link-local address), and DHCPv6's answers, which come the same way: without
        # them a box whose global address comes from DHCPv6 loses it at the lease's end.
        "\t\tip6 saddr fe80::/10 udp sport 1900 accept\n"
        "\t\tip6 saddr fe80::/10 ip6 daddr fe80::/10 udp sport 547 udp dport 546 accept\n"
        f'\t\ttcp dport {{ {ports} }} accept comment "ssh (nbremote)"\n'
        "\t}\n"
        "}\n"
    )


def without_block(text: str) -> str:
    return re.sub(rf"\n?{re.escape(BEGIN)}\n.*?{re.escape(END)}\n", "", text, flags=re.S)


def with_block(text: str, port: int, also: tuple[int, ...] = ()) -> str:
    base = without_block(text)
    if base and not base.endswith("\n"):
        base += "\n"
    return f"{base}\n{BEGIN}\n{nft_table(port, also)}{END}\n"


@dataclass
class Outcome:
    backend: str
    changed: bool
    detail: str

    def to_json(self) -> dict:
        return {"backend": self.backend, "changed": self.changed, "detail": self.detail}


class Backend(Protocol):
    name: str

    def is_supported(self) -> bool: ...

    def active_port(self) -> int | None: ...

    def preview(self, port: int) -> str: ...

    def apply(self, port: int, also: tuple[int, ...] = ()) -> Outcome: ...

    def remove(self) -> Outcome: ...

    def ipv6_gap(self, port: int) -> str | None:
        """Why ssh on `port` cannot come in over IPv6 as over IPv4, or None when it can."""
        ...


class Nftables:
    """Our own `inet nbremote` table, live and in /etc/nftables.conf (loaded at boot)."""

    name = "nftables"

    def __init__(self, conf: Path = Path("/etc/nftables.conf"), run: system.Runner = system.run) -> None:
        self.conf, self.run = conf, run

    def is_supported(self) -> bool:
        return system.which("nft") is not None and self.run(["nft", "list", "tables"]).returncode == 0

    def _nft(self, *args: str, script: str | None = None) -> str:
        done = self.run(["nft", *args], input=script)
        if done.returncode != 0:
            raise NbremoteError(f"nft {' '.join(args)} failed", details=done.stderr.strip().splitlines())
        return done.stdout

    def active_port(self) -> int | None:
        done = self.run(["nft", "list", "table", "inet", TABLE])
        match = re.search(r"tcp dport \{? ?(\d+)", done.stdout) if done.returncode == 0 else None
        return int(match.group(1)) if match else None

    def _conf_text(self) -> str:
        return self.conf.read_text() if self.conf.exists() else "#!/usr/sbin/nft -f\n"

    def preview(self, port: int) -> str:
        return nft_table(port)

    def apply(self, port: int, also: tuple[int, ...] = ()) -> Outcome:
        new_conf = with_block(self._conf_text(), port, also)
        if not also and self.active_port() == port and self._conf_text() == new_conf:
            return Outcome(self.name, False, f"already active: allow {port}/tcp, drop other inbound")
        self._nft("-c", "-f", "-", script=new_conf)
        tx = Transaction()
        try:
            tx.write(self.conf, new_conf.encode())
            # Create-then-delete makes the replacement one atomic batch whether or not it existed.
            self._nft("-f", "-", script=f"table inet {TABLE}\ndelete table inet {TABLE}\n{nft_table(port, also)}")
        except BaseException:
            tx.rollback()
            raise
        return Outcome(
            self.name, True, f"allow {port}/tcp, drop other inbound (table inet {TABLE}, saved in {self.conf})"
        )

    def ipv6_gap(self, port: int) -> str | None:
        return None  # an inet table: the same rules for both families

    def remove(self) -> Outcome:
        text = self._conf_text()
        had_table = self.active_port() is not None or self.run(["nft", "list", "table", "inet", TABLE]).returncode == 0
        if not had_table and without_block(text) == text:
            return Outcome(self.name, False, "nothing to remove")
        if without_block(text) != text:
            Transaction().write(self.conf, without_block(text).encode())
        if had_table:
            self._nft("delete", "table", "inet", TABLE)
        return Outcome(self.name, True, f"removed table inet {TABLE} and its block in {self.conf}")


class Ufw:
    """ufw when it is already the active firewall: tagged allow rules and its
    default incoming policy set to deny. ufw keeps both across reboots itself.

    The previous default policy is remembered (a copy of /etc/default/ufw in
    a backup next to ufw's files) so `--remove` puts it back.
    """

    name = "ufw"

    def __init__(self, etc: Path = Path("/etc"), run: system.Runner = system.run) -> None:
        self.run = run
        self.defaults = etc / "default/ufw"
        self.backup = Backup(etc / "ufw/nbremote-backup")

    def _ufw(self, *args: str) -> str:
        done = self.run(["ufw", *args])
        if done.returncode != 0:
            raise NbremoteError(
                f"ufw {' '.join(args)} failed", details=(done.stderr or done.stdout).strip().splitlines()
            )
        return done.stdout

    def is_supported(self) -> bool:
        if system.which("ufw") is None:
            return False
        done = self.run(["ufw", "status"])
        return done.returncode == 0 and "Status: active" in done.stdout

    def _ports(self) -> tuple[list[int], list[int]]:
        """(ports our tagged rules allow, ports the user's own rules allow), in ufw's order."""
        ours: list[int] = []
        theirs: list[int] = []
        for match in re.finditer(
            r"^(\d+)(?:/tcp)?\s+ALLOW IN\s+Anywhere(\s+#\s*nbremote)?\s*$", self._ufw("status", "verbose"), re.M
        ):
            (ours if match.group(2) else theirs).append(int(match.group(1)))
        return list(dict.fromkeys(ours)), theirs

    def _incoming(self) -> str:
        match = re.search(r"^Default: (\w+) \(incoming\)", self._ufw("status", "verbose"), re.M)
        return match.group(1) if match else ""

    def active_port(self) -> int | None:
        ours, _ = self._ports()
        return ours[0] if ours else None

    def preview(self, port: int) -> str:
        return f"ufw allow {port}/tcp comment nbremote\nufw default deny incoming\n"

    def apply(self, port: int, also: tuple[int, ...] = ()) -> Outcome:
        ours, theirs = self._ports()
        wanted = [p for p in dict.fromkeys((port, *also)) if p not in theirs]
        if sorted(ours) == sorted(wanted) and self._incoming() == "deny":
            return Outcome(self.name, False, f"already active: allow {port}/tcp, deny other inbound")
        if not self.backup.exists():
            self.backup.save([Original.read(self.defaults)], "nbremote server firewall (ufw)")
        # New rules first, old ones after: the ssh port is never closed in between.
        for p in wanted:
            if p not in ours:
                self._ufw("allow", f"{p}/tcp", "comment", "nbremote")
        for p in ours:
            if p not in wanted:
                self._ufw("delete", "allow", f"{p}/tcp")
        if self._incoming() != "deny":
            self._ufw("default", "deny", "incoming")
        mine = "" if port not in theirs else f" (your own ufw rule already allows {port}/tcp)"
        return Outcome(self.name, True, f"allow {port}/tcp, deny other inbound (ufw){mine}{self._ipv6_note()}")

    def ipv6_gap(self, port: int) -> str | None:
        return self._ipv6_note().removeprefix("; ") or None

    def _ipv6_note(self) -> str:
        """ufw with IPV6=no drops all IPv6 but loopback: say so where this machine has global IPv6."""
        try:
            text = self.defaults.read_bytes()
        except OSError:
            return ""
        match = re.search(rb'^IPV6="?(\w+)"?', text, re.M)
        if (match and match.group(1).lower() == b"yes") or not netinfo.global_ipv6():
            return ""
        return (
            f"; ufw's IPV6=no in {self.defaults} drops all IPv6, so ssh over IPv6 cannot come in "
            "(IPV6=yes there, then `ufw reload`, lets it in as over IPv4)"
        )

    def remove(self) -> Outcome:
        ours, _ = self._ports()
        if not ours and not self.backup.exists():
            return Outcome(self.name, False, "nothing to remove")
        for p in ours:
            self._ufw("delete", "allow", f"{p}/tcp")
        said = [f"removed ufw's allow {', '.join(f'{p}/tcp' for p in ours)} rule"] if ours else []
        if self.backup.exists():
            before = _ufw_policy(self.backup.load()[0].content)
            # Only when it is still what we set: a policy the owner chose since stays.
            if before and before != "deny" and self._incoming() == "deny":
                self._ufw("default", before, "incoming")
                said.append(f"default incoming policy back to {before}")
            self.backup.remove()
        return Outcome(self.name, True, "; ".join(said) or "nothing of ours was left in ufw")


def _ufw_policy(defaults: bytes | None) -> str:
    """ufw's word for the DEFAULT_INPUT_POLICY in /etc/default/ufw's text."""
    match = re.search(rb'^DEFAULT_INPUT_POLICY="?(\w+)"?', defaults or b"", re.M)
    return {b"ACCEPT": "allow", b"DROP": "deny", b"REJECT": "reject"}.get(match.group(1), "") if match else ""


# ---------------------------------------------------------------- iptables

CHAIN = "NBREMOTE-INPUT"
FILE_HEADER = "# Written by nbremote (`nbremote server firewall`); `--remove` deletes this file"
PRIVATE_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
_OURS = re.compile(rf"^(?:\[\d+:\d+\] )?(?::{CHAIN} |-A {CHAIN} |-A INPUT -j {CHAIN}$)")


def iptables_chain(ports: tuple[int, ...], family: int) -> list[str]:
    """Our chain's rules, written the way iptables-save prints them back."""
    rules = [
        f"-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {CHAIN} -m conntrack --ctstate INVALID -j DROP",
        f"-A {CHAIN} -i lo -j ACCEPT",
    ]
    if family == 4:
        rules.append(f"-A {CHAIN} -p icmp -j ACCEPT")
        # Replies to UPnP discovery, as in the nft table.
        rules += [f"-A {CHAIN} -s {net} -p udp -m udp --sport 1900 -j ACCEPT" for net in PRIVATE_V4]
    else:
        rules += [
            f"-A {CHAIN} -p ipv6-icmp -j ACCEPT",
            # UPnP discovery's and DHCPv6's answers, as in the nft table.
            f"-A {CHAIN} -s fe80::/10 -p udp -m udp --sport 1900 -j ACCEPT",
            f"-A {CHAIN} -s fe80::/10 -d fe80::/10 -p udp -m udp --sport 547 --dport 546 -j ACCEPT",
        ]
    rules += [f"-A {CHAIN} -p tcp -m tcp --dport {p} -j ACCEPT" for p in ports]
    return rules + [f"-A {CHAIN} -j DROP"]


def without_chain(text: str) -> str:
    """iptables-save text with every line of ours taken out (and nothing else)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _OURS.match(line))


def with_chain(text: str, ports: tuple[int, ...], family: int) -> str:
    """iptables-save text with our chain in its filter table, jumped to first from INPUT."""
    lines = without_chain(text).splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "*filter")
    except StopIteration:
        start = len(lines)
        lines += ["*filter\n", ":INPUT ACCEPT [0:0]\n", ":FORWARD ACCEPT [0:0]\n", ":OUTPUT ACCEPT [0:0]\n", "COMMIT\n"]
    commit = next(i for i in range(start, len(lines)) if lines[i].strip() == "COMMIT")
    decls = start + 1
    while decls < commit and lines[decls].startswith(":"):
        decls += 1
    chain = [f"{rule}\n" for rule in iptables_chain(ports, family)]
    return "".join(
        lines[:decls] + [f":{CHAIN} - [0:0]\n", f"-A INPUT -j {CHAIN}\n"] + lines[decls:commit] + chain + lines[commit:]
    )


def chain_rules(text: str) -> list[str]:
    """Our chain's rules in iptables-save text, counters left out."""
    return [
        re.sub(r"^\[\d+:\d+\] ", "", line)
        for line in text.splitlines()
        if re.match(rf"^(?:\[\d+:\d+\] )?-A {CHAIN} ", line)
    ]


def first_input_rule(text: str) -> str | None:
    for line in text.splitlines():
        line = re.sub(r"^\[\d+:\d+\] ", "", line)
        if line.startswith("-A INPUT "):
            return line
    return None


class Iptables:
    """iptables (either backend) when there is no nft: our own chain, jumped to
    first from INPUT, in the live ruleset and in /etc/iptables/rules.v4 and
    rules.v6 (what iptables-persistent loads at boot).

    Every change is iptables-save, edit the text, iptables-restore: one atomic
    swap of the filter table, and `--remove` takes out our lines only, which
    gives back exactly the previous ruleset.
    """

    name = "iptables"

    def __init__(self, etc: Path = Path("/etc/iptables"), run: system.Runner = system.run) -> None:
        self.etc, self.run = etc, run

    def _families(self) -> list[tuple[int, str, Path]]:
        found = [(4, "iptables", self.etc / "rules.v4")]
        if (
            all(system.which(f"ip6tables{s}") for s in ("", "-save", "-restore"))
            and self.run(["ip6tables-save", "-t", "filter"]).returncode == 0
        ):
            found.append((6, "ip6tables", self.etc / "rules.v6"))
        return found

    def is_supported(self) -> bool:
        return (
            all(system.which(f"iptables{s}") for s in ("", "-save", "-restore"))
            and self.run(["iptables-save", "-t", "filter"]).returncode == 0
        )

    def _save(self, tool: str) -> str:
        done = self.run([f"{tool}-save", "-c", "-t", "filter"])
        if done.returncode != 0:
            raise NbremoteError(f"{tool}-save failed", details=done.stderr.strip().splitlines())
        return done.stdout

    def _restore(self, tool: str, text: str, *, test: bool = False) -> None:
        done = self.run([f"{tool}-restore", "-w", "5", "-c", *(["--test"] if test else [])], input=text)
        if done.returncode != 0:
            raise NbremoteError(
                f"{tool}-restore{' --test' if test else ''} rejected the rules",
                details=done.stderr.strip().splitlines(),
            )

    def active_port(self) -> int | None:
        match = re.search(r"--dport (\d+) -j ACCEPT", "\n".join(chain_rules(self._save("iptables"))))
        return int(match.group(1)) if match else None

    def ipv6_gap(self, port: int) -> str | None:
        if 6 not in [family for family, _, _ in self._families()]:
            return "ip6tables is missing here: IPv6 is not filtered by nbremote's rules (nor let in by them)"
        if f"--dport {port} -j ACCEPT" not in "\n".join(chain_rules(self._save("ip6tables"))):
            return f"ip6tables has no nbremote rule for {port}/tcp: ssh over IPv6 is left to the rules there"
        return None

    def preview(self, port: int) -> str:
        return (
            f"*filter\n:{CHAIN} - [0:0]\n-A INPUT -j {CHAIN}\n"
            + "".join(f"{rule}\n" for rule in iptables_chain((port,), 4))
            + "COMMIT\n"
        )

    def _file_text(self, path: Path, tool: str) -> str:
        if path.exists():
            return path.read_text()
        done = self.run([f"{tool}-save"])
        return f"{FILE_HEADER}\n{done.stdout if done.returncode == 0 else ''}"

    def apply(self, port: int, also: tuple[int, ...] = ()) -> Outcome:
        ports = tuple(dict.fromkeys((port, *also)))
        plans = []
        for family, tool, path in self._families():
            live = self._save(tool)
            new_live = with_chain(live, ports, family)
            file_text = self._file_text(path, tool)
            new_file = with_chain(file_text, ports, family)
            done = (
                chain_rules(live) == iptables_chain(ports, family)
                and first_input_rule(live) == f"-A INPUT -j {CHAIN}"
                and path.exists()
                and file_text == new_file
            )
            plans.append((tool, path, live, new_live, new_file, done))
        if all(plan[-1] for plan in plans):
            return Outcome(self.name, False, f"already active: allow {port}/tcp, drop other inbound")
        for tool, _, _, new_live, _, _ in plans:
            self._restore(tool, new_live, test=True)
        tx = Transaction()
        swapped = []
        try:
            for tool, path, live, new_live, new_file, _ in plans:
                path.parent.mkdir(mode=0o755, exist_ok=True)
                tx.write(path, new_file.encode(), mode=0o640 if not path.exists() else None)
                self._restore(tool, new_live)
                swapped.append((tool, live))
        except BaseException as exc:
            failures = self._undo(swapped, tx)
            if failures:
                raise NbremoteError(
                    "the firewall change failed and could not be fully undone",
                    details=[f"the change: {exc}", *failures],
                    hint=f"put the rules back by hand, then run `{rootcmd.command('server', 'firewall', '--remove')}`",
                ) from exc
            raise
        files = " and ".join(str(plan[1]) for plan in plans)
        boot = "" if system.which("netfilter-persistent") else " (install iptables-persistent to load it at boot)"
        return Outcome(
            self.name, True, f"allow {port}/tcp, drop other inbound (iptables chain {CHAIN}, saved in {files}{boot})"
        )

    def _undo(self, swapped: list[tuple[str, str]], tx: Transaction) -> list[str]:
        """Every step is tried even when one before it fails: a failing restore must not leave
        the other family's rules or the files changed. Returns what could not be undone."""
        failures = []
        for tool, live in reversed(swapped):
            try:
                self._restore(tool, live)
            except NbremoteError as exc:
                failures.append(f"{tool} ruleset: {'; '.join([exc.message, *exc.details])}")
        return failures + tx.rollback()

    def remove(self) -> Outcome:
        changed = []
        for _, tool, path in self._families():
            live = self._save(tool)
            if without_chain(live) != live:
                self._restore(tool, without_chain(live))
                changed.append(f"{tool} chain {CHAIN}")
            if not path.exists():
                continue
            text = path.read_text()
            if text.startswith(FILE_HEADER + "\n"):
                path.unlink()
                changed.append(f"{path} (it was ours)")
            elif without_chain(text) != text:
                atomic_write(path, without_chain(text).encode())
                changed.append(f"our lines in {path}")
        if not changed:
            return Outcome(self.name, False, "nothing to remove")
        with contextlib.suppress(OSError):
            self.etc.rmdir()  # only when empty: it was made for our file
        return Outcome(self.name, True, f"removed {', '.join(changed)}")


def default_backends() -> list[Backend]:
    """In the order they are preferred: see the module's docstring."""
    return [Ufw(), Nftables(), Iptables()]


def choose(backends: list[Backend] | None = None) -> Backend:
    backends = backends if backends is not None else default_backends()
    for backend in backends:
        if backend.is_supported():
            return backend
    raise NbremoteError(
        "no firewall tool found here",
        details=[f"tried {', '.join(b.name for b in backends)}"],
        hint="install nftables: `apt-get install nftables`",
    )


def check_rows(root: bool, ssh_ports: set[int]) -> list[Check]:
    if not root:
        return [Check("firewall", SKIP, "reading the ruleset needs root", rootcmd.command("server", "check"))]
    try:
        backend = choose()
    except NbremoteError as exc:
        return [Check("firewall", WARN, exc.message, exc.hint)]
    port = backend.active_port()
    if port is None:
        return [
            Check(
                "firewall",
                WARN,
                f"{backend.name}: no nbremote rules; other inbound ports are open",
                rootcmd.command("server", "firewall"),
            )
        ]
    if port not in ssh_ports:
        return [
            Check(
                "firewall",
                FAIL,
                f"{backend.name} allows {port}/tcp but sshd listens on {', '.join(map(str, sorted(ssh_ports)))}",
                rootcmd.command("server", "firewall"),
            )
        ]
    return [Check("firewall", PASS, f"{backend.name}: allow {port}/tcp, drop other inbound")]


def ipv6_row(root: bool, ssh_ports: set[int]) -> Check:
    """Whether this machine's firewall lets ssh in over IPv6 as over IPv4 (asked where it has a
    global IPv6 address: there no NAT stands in front, only firewalls)."""
    if not root:
        return Check("ipv6 firewall", SKIP, "reading the ruleset needs root", rootcmd.command("server", "check"))
    try:
        backend = choose()
    except NbremoteError:
        return Check("ipv6 firewall", WARN, "no firewall tool here: ssh comes in over IPv6, as does every other port")
    port = backend.active_port()
    if port is None or port not in ssh_ports:
        return Check(
            "ipv6 firewall",
            WARN,
            f"{backend.name}: no nbremote rule for ssh; over IPv6 it is up to the rules there",
            rootcmd.command("server", "firewall"),
        )
    gap = backend.ipv6_gap(port)
    if gap:
        fix = "IPV6=yes in /etc/default/ufw, then `sudo ufw reload`" if backend.name == "ufw" else None
        return Check("ipv6 firewall", FAIL, f"{backend.name}: {gap}", fix or rootcmd.command("server", "firewall"))
    return Check("ipv6 firewall", PASS, f"{backend.name}: allow {port}/tcp over IPv6 as over IPv4")
