"""The inbound firewall: the ssh port open, everything else new from outside dropped.

Jupyter never gets a port: it listens on 127.0.0.1 and is reached through the
ssh tunnel, so opening it would only expose its token page to the network.

Backends, first supported wins: ufw when it is the active firewall (adding
nft rules behind its back would confuse its owner), else nftables, else
iptables. Each tags what it adds so `--remove` takes out exactly that.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nbremote.errors import NbremoteError
from nbremote.server import system
from nbremote.server.checks import FAIL, PASS, SKIP, WARN, Check
from nbremote.server.files import Transaction

TABLE = "nbremote"
BEGIN = "# BEGIN nbremote: written by `nbremote server firewall`; `--remove` deletes this block"
END = "# END nbremote"
WHY_NO_JUPYTER = ("no Jupyter port opened: Jupyter listens on 127.0.0.1 and is reached through "
                  "the ssh tunnel, so an open port would only show its login page to the network")


def nft_table(port: int, also: tuple[int, ...] = ()) -> str:
    """Our table. Established traffic first so the ssh session that runs this survives.
    `also`: ports kept open for the moment harden moves sshd from one to the other."""
    ports = ", ".join(str(p) for p in (port, *also))
    return (f"table inet {TABLE} {{\n"
            "\tchain input {\n"
            "\t\ttype filter hook input priority filter - 1; policy drop;\n"
            "\t\tct state established,related accept\n"
            "\t\tct state invalid drop\n"
            "\t\tiif \"lo\" accept\n"
            "\t\tmeta l4proto { icmp, ipv6-icmp } accept\n"
            # Replies to UPnP discovery (sent to a multicast address, so conntrack
            # cannot tie them to it) come from the router: private sources only.
            "\t\tip saddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 } udp sport 1900 accept\n"
            f"\t\ttcp dport {{ {ports} }} accept comment \"ssh (nbremote)\"\n"
            "\t}\n"
            "}\n")


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
        return Outcome(self.name, True, f"allow {port}/tcp, drop other inbound (table inet {TABLE}, "
                                        f"saved in {self.conf})")

    def remove(self) -> Outcome:
        text = self._conf_text()
        had_table = self.active_port() is not None or self.run(
            ["nft", "list", "table", "inet", TABLE]).returncode == 0
        if not had_table and without_block(text) == text:
            return Outcome(self.name, False, "nothing to remove")
        if without_block(text) != text:
            Transaction().write(self.conf, without_block(text).encode())
        if had_table:
            self._nft("delete", "table", "inet", TABLE)
        return Outcome(self.name, True, f"removed table inet {TABLE} and its block in {self.conf}")


class Ufw:
    """ufw when it is already the active firewall: one tagged allow rule."""

    name = "ufw"

    def __init__(self, extra_args: tuple[str, ...] = (), run: system.Runner = system.run) -> None:
        # extra_args: e.g. ("--rootdir", R, "--datadir", R) to work on a copy of ufw's files.
        self.extra_args, self.run = extra_args, run

    def _ufw(self, *args: str) -> str:
        done = self.run(["ufw", *self.extra_args, *args])
        if done.returncode != 0:
            raise NbremoteError(f"ufw {' '.join(args)} failed", details=(done.stderr or done.stdout).strip().splitlines())
        return done.stdout

    def is_supported(self) -> bool:
        if system.which("ufw") is None:
            return False
        done = self.run(["ufw", *self.extra_args, "status"])
        return done.returncode == 0 and "Status: active" in done.stdout

    def active_port(self) -> int | None:
        match = re.search(r"^(\d+)/tcp\s+ALLOW IN.*# nbremote", self._ufw("status", "verbose"), re.M)
        return int(match.group(1)) if match else None

    def preview(self, port: int) -> str:
        return f"ufw default deny incoming\nufw allow {port}/tcp comment nbremote\n"

    def apply(self, port: int, also: tuple[int, ...] = ()) -> Outcome:
        for extra in also:
            self._ufw("allow", f"{extra}/tcp", "comment", "nbremote")
        old = self.active_port()
        if old == port and "deny (incoming)" in self._ufw("status", "verbose"):
            return Outcome(self.name, False, f"already active: allow {port}/tcp, deny other inbound")
        self._ufw("allow", f"{port}/tcp", "comment", "nbremote")
        if old is not None and old != port:
            self._ufw("delete", "allow", f"{old}/tcp")
        self._ufw("default", "deny", "incoming")
        return Outcome(self.name, True, f"allow {port}/tcp, deny other inbound (ufw)")

    def remove(self) -> Outcome:
        old = self.active_port()
        if old is None:
            return Outcome(self.name, False, "nothing to remove")
        self._ufw("delete", "allow", f"{old}/tcp")
        return Outcome(self.name, True, f"removed ufw's allow {old}/tcp rule (its default policy is left as it was)")


def choose(backends: list[Backend] | None = None) -> Backend:
    backends = backends if backends is not None else [Ufw(), Nftables()]
    for backend in backends:
        if backend.is_supported():
            return backend
    raise NbremoteError("no firewall tool found here",
                        details=[f"tried {', '.join(b.name for b in backends)}"],
                        hint="install nftables: `apt-get install nftables`")


def check_rows(root: bool, ssh_ports: set[int]) -> list[Check]:
    if not root:
        return [Check("firewall", SKIP, "reading the ruleset needs root", "sudo nbremote server check")]
    try:
        backend = choose()
    except NbremoteError as exc:
        return [Check("firewall", WARN, exc.message, exc.hint)]
    port = backend.active_port()
    if port is None:
        return [Check("firewall", WARN, f"{backend.name}: no nbremote rules; other inbound ports are open",
                      "sudo nbremote server firewall")]
    if port not in ssh_ports:
        return [Check("firewall", FAIL, f"{backend.name} allows {port}/tcp but sshd listens on "
                      f"{', '.join(map(str, sorted(ssh_ports)))}", "sudo nbremote server firewall")]
    return [Check("firewall", PASS, f"{backend.name}: allow {port}/tcp, drop other inbound")]
