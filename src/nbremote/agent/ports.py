"""What listens on the server's loopback, for `nbremote forward`: from /proc/net/tcp{,6}.

The kernel's socket tables name every listener's port, address and owner (uid)
for everyone to read, so a port of another user is told apart from a free one
without reading that user's processes; our own listeners get their program
through /proc/PID/fd (readable only for our own processes).
"""

from __future__ import annotations

import os

from .protocol import AgentError

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Channel, Doc

LISTEN = "0A"
# Addresses a forward to 127.0.0.1 (or ::1) reaches: loopback and the wildcard.
REACHABLE = {"0100007F", "00000000", "00000000000000000000000000000000", "00000000000000000000000001000000"}


def _listeners() -> list[tuple[int, str, int, str]]:
    """(port, address as written, uid, inode) of each TCP listener reachable on loopback."""
    found: list[tuple[int, str, int, str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            address, port = fields[1].split(":")
            loopback = (len(address) == 8 or address.startswith("0000000000000000FFFF0000")) and address.endswith(
                "7F"
            )  # all of 127.0.0.0/8, also IPv4-mapped
            if address not in REACHABLE and not loopback:
                continue
            found.append((int(port, 16), address, int(fields[7]), fields[9]))
    return found


def _programs(inodes: set[str]) -> dict[str, tuple[int, str]]:
    """inode -> (pid, command line) for the sockets of our own processes."""
    wanted = {"socket:[%s]" % inode: inode for inode in inodes}
    owners: dict[str, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir("/proc/%s/fd" % entry)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink("/proc/%s/fd/%s" % (entry, fd))
            except OSError:
                continue
            if target in wanted and wanted[target] not in owners:
                try:
                    with open("/proc/%s/cmdline" % entry, "rb") as handle:
                        argv = handle.read().split(b"\0")
                except OSError:
                    argv = []
                command = " ".join(a.decode("utf-8", "replace") for a in argv if a)[:200]
                owners[wanted[target]] = (int(entry), command)
    return owners


def op_listening(channel: Channel) -> Doc:
    uid = os.getuid()
    mine = [(port, inode) for port, _, owner, inode in _listeners() if owner == uid]
    programs = _programs({inode for _, inode in mine})
    ports: dict[int, dict[str, Any]] = {}
    for port, inode in mine:
        pid, command = programs.get(inode, (None, ""))
        if port not in ports or (ports[port]["pid"] is None and pid is not None):
            ports[port] = {"port": port, "pid": pid, "command": command}
    return {"listening": [ports[p] for p in sorted(ports)]}


def op_port_check(channel: Channel, port: Any = None) -> Doc:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AgentError("bad_request", "port must be a number from 1 to 65535")
    owners = {owner for p, _, owner, _ in _listeners() if p == port}
    if not owners:
        raise AgentError(
            "not_listening",
            "nothing listens on port %d of the server's loopback" % port,
            hint="start the program first (TensorBoard: `tensorboard --logdir runs --port %d`); "
            "`nbremote forward HOST` lists what listens there" % port,
        )
    if os.getuid() not in owners:
        raise AgentError(
            "not_yours",
            "port %d on the server belongs to another user's program" % port,
            hint="nbremote forwards only your own programs' ports; pick the port your program uses",
        )
    return {"port": port}
