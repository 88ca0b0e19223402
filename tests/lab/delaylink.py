"""A point-to-point link with a fixed one-way delay between two network namespaces.

The kernel on the lab machines has no ``sch_netem``, so latency is made in user
space: one TUN device in each namespace, and a relay process that reads every
packet from one device, holds it for ``delay_ms`` and writes it to the other.
Packets keep their order (a fixed hold time on a FIFO cannot reorder).

    link = DelayLink.start("nbr-laptop", "192.168.77.10",
                           "nbr-server", "192.168.77.2", delay_ms=10)
    ...                        # round trip between the two is now ~20 ms
    link.set_down(True)        # outage: every packet is lost, both ways
    link.set_down(False)
    link.stop()

The relay lives in the root namespace but never opens a socket: it only moves
bytes between the two TUN file descriptors, which stay bound to the namespaces
they were created in. Nothing of the lab is therefore reachable from, or leaks
into, the root namespace.

By default the TUN devices use offload (IFF_VNET_HDR + TSO): TCP still sees a
1500-byte MTU, hence real segment counts and slow start, but the relay moves
~64 KiB super-packets. Measured on a 2-core lab VM (200 MB, one TCP stream):
about 1 GB/s at 0 ms using ~75% of a core; without offload, 190 MB/s at a
full core with MTU 1500 (raising the MTU to 65000 also gives ~1 GB/s, but
makes TCP unrealistically fast to ramp up). Round trips for delay_ms 0/10/50:
0.25 / 20.4 / 100.5 ms (ping medians).

Stdlib only; this file is also the relay's program (run as a script).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

__all__ = ["DelayLink", "DelayLinkError", "icmp_ping", "open_tun_in_netns", "run_in_netns"]

CLONE_NEWNET = 0x40000000

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

# One read returns one packet; with offload a packet can be a 64 KiB TSO
# super-packet plus the 10-byte virtio header.
_READ_SIZE = 65536 + 64
# Packets read from one side per loop turn, so the other side and the timer
# are served in between during a flood.
_BATCH = 64
# Drop-tail limit per direction, like netem's queue limit: keeps a runaway
# sender from growing the relay without bound. 100 ms at 2 Gbit/s fits.
_QUEUE_LIMIT_BYTES = 64 * 1024 * 1024
# Most a packet may leave before its due time (see the relay's `leads`).
_MAX_LEAD = 0.0002


class DelayLinkError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# namespace helpers (parent side)

_libc = None


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # 3.12+
        os.setns(fd, nstype)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _netns_path(ns: str) -> str:
    return ns if ns.startswith("/") else f"/run/netns/{ns}"


def run_in_netns(ns: str, fn, *args, **kwargs):
    """Call fn in a short-lived thread that has joined network namespace ns.

    A namespace switch is per thread, so doing it in a throwaway thread leaves
    the caller's namespace untouched even if fn raises. Sockets and TUN fds
    created by fn stay bound to ns after the thread ends, which makes this a
    way for tests to open sockets inside the lab without a subprocess.
    """
    box: dict = {}

    def target():
        try:
            with open(_netns_path(ns), "rb") as f:
                _setns(f.fileno(), CLONE_NEWNET)
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def open_tun_in_netns(ns: str, ifname: str, offload: bool = False) -> int:
    """Create TUN device ifname inside namespace ns; return its fd (CLOEXEC).

    The device is not persistent: it disappears when the last fd closes.
    """
    if len(ifname.encode()) > 15:
        raise ValueError(f"interface name too long: {ifname!r}")

    def make() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
            if offload:
                # Lets the stack hand over TSO super-packets with the checksum
                # still to do; the other TUN accepts them as such, so a bulk
                # transfer costs the relay one read+write per ~64 KiB instead
                # of per MTU-sized packet, while TCP still sees a 1500 MTU.
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
        except BaseException:
            os.close(fd)
            raise
        return fd

    return run_in_netns(ns, make)


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise DelayLinkError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _link_exists(ns: str, ifname: str) -> bool:
    if not os.path.exists(_netns_path(ns)):
        return False
    r = subprocess.run(["ip", "-n", ns, "link", "show", "dev", ifname], capture_output=True)
    return r.returncode == 0


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp_ping(
    ns: str, addr: str, count: int = 5, interval: float = 0.05, timeout: float = 1.0, size: int = 56
) -> list[float | None]:
    """Ping addr from inside namespace ns; round trips in ms, None if lost.

    iputils-ping is not installed on every lab machine, and a raw socket
    opened in the namespace keeps the probe inside the lab (root needed).
    """
    sock = run_in_netns(ns, socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    rtts: list[float | None] = []
    try:
        for seq in range(count):
            if seq:
                time.sleep(interval)
            body = struct.pack("!HH", ident, seq) + os.urandom(size)
            pkt = struct.pack("!BBH", 8, 0, _icmp_checksum(b"\x08\0\0\0" + body)) + body
            sent = time.monotonic()
            sock.sendto(pkt, (addr, 0))
            deadline = sent + timeout
            rtt = None
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except TimeoutError:
                    break
                ihl = (data[0] & 0x0F) * 4
                if data[ihl] == 0 and data[ihl + 4 : ihl + 8] == body[:4] and data[ihl + 8 :] == body[4:]:
                    rtt = (time.monotonic() - sent) * 1000.0
                    break
            rtts.append(rtt)
    finally:
        sock.close()
    return rtts


# --------------------------------------------------------------------------
# public API


class DelayLink:
    """Handle on a running relay; create with DelayLink.start()."""

    def __init__(self, proc: subprocess.Popen, ns_a: str, ns_b: str, ifname: str, delay_ms: float):
        self._proc = proc
        self._lock = threading.Lock()
        self.ns_a, self.ns_b, self.ifname, self.delay_ms = ns_a, ns_b, ifname, delay_ms
        self.down = False

    @classmethod
    def start(
        cls,
        ns_a: str,
        addr_a: str,
        ns_b: str,
        addr_b: str,
        delay_ms: float,
        prefix: int = 24,
        ifname: str = "nbrtun0",
        mtu: int = 1500,
        offload: bool = True,
    ) -> "DelayLink":
        """Join ns_a (addr_a/prefix) and ns_b (addr_b/prefix) with a link that
        holds every packet delay_ms in each direction (round trip 2*delay_ms).

        mtu is what TCP sees (1500 keeps segment counts, hence slow start,
        like a real path). offload=True lets the relay move 64 KiB TSO
        super-packets instead of single segments; same behaviour, far less
        relay CPU. ns_a/ns_b are names under /run/netns (or absolute paths).
        """
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        for ns in (ns_a, ns_b):
            if not os.path.exists(_netns_path(ns)):
                raise DelayLinkError(f"no such network namespace: {ns}")
        fds: list[int] = []
        proc = None
        try:
            for ns in (ns_a, ns_b):
                fds.append(open_tun_in_netns(ns, ifname, offload=offload))
            for ns, addr in ((ns_a, addr_a), (ns_b, addr_b)):
                _ip("-n", ns, "addr", "add", f"{addr}/{prefix}", "dev", ifname)
                _ip("-n", ns, "link", "set", "dev", ifname, "mtu", str(mtu), "up")
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    os.path.abspath(__file__),
                    "--fd-a",
                    str(fds[0]),
                    "--fd-b",
                    str(fds[1]),
                    "--delay-ms",
                    repr(float(delay_ms)),
                    *(["--vnet-hdr"] if offload else []),
                ],
                pass_fds=fds,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # Own session: a Ctrl-C in the test's terminal must not kill the
                # relay before the test's teardown has used it.
                start_new_session=True,
            )
            line = proc.stdout.readline()
            if line.strip() != b"ready":
                proc.kill()
                proc.wait()
                raise DelayLinkError(f"relay failed to start: {line!r}")
        except BaseException:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            # From here on only the relay holds the devices open, so its end
            # (stop, crash, or parent death) removes both interfaces.
            for fd in fds:
                os.close(fd)
        return cls(proc, ns_a, ns_b, ifname, delay_ms)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _command(self, cmd: str) -> bytes:
        with self._lock:
            if self._proc.poll() is not None:
                raise DelayLinkError("relay is not running")
            self._proc.stdin.write(cmd.encode() + b"\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
        if not reply:
            raise DelayLinkError("relay exited")
        return reply

    def set_down(self, down: bool = True) -> None:
        """Cut (True) or restore (False) the link. While down every packet,
        including those already held in the delay queue, is dropped silently:
        the endpoints see real loss, not local send errors."""
        self._command("down" if down else "up")
        self.down = bool(down)

    def stats(self) -> dict:
        """Counters from the relay: per direction ("a_to_b", "b_to_a")
        packets/bytes forwarded and drops."""
        return json.loads(self._command("stats"))

    def cpu_seconds(self) -> float:
        """User+system CPU time the relay process has used so far."""
        with open(f"/proc/{self._proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """End the relay; its TUN devices vanish with it. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc.returncode is None:
                try:
                    proc.stdin.close()  # EOF is the relay's signal to exit
                except OSError:
                    pass
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        # The kernel unregisters a TUN device asynchronously after its last
        # close; wait so callers can reuse the name or check it is gone.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if not (_link_exists(self.ns_a, self.ifname) or _link_exists(self.ns_b, self.ifname)):
                return
            time.sleep(0.02)
        raise DelayLinkError(f"{self.ifname} still present after relay exit")

    def __enter__(self) -> "DelayLink":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"DelayLink({self.ns_a}<->{self.ns_b} dev {self.ifname}, {self.delay_ms} ms each way, pid {self._proc.pid})"
        )


# --------------------------------------------------------------------------
# the relay (child process)


def _prctl_setup() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return
    zero = ctypes.c_ulong(0)
    # PR_SET_NAME: shows as nbr-delaylink in ps/top.
    libc.prctl(15, ctypes.c_char_p(b"nbr-delaylink"), zero, zero, zero)
    # PR_SET_TIMERSLACK: the default 50 us slack would be added to every hold.
    libc.prctl(29, ctypes.c_ulong(1), zero, zero, zero)


def _relay(fd_a: int, fd_b: int, delay: float, ctl_in: int, ctl_out: int) -> None:
    # PR_SET_PDEATHSIG is not used: it fires when the parent *thread* ends,
    # and a link started from a worker thread must outlive that thread.
    # Instead the relay watches for EOF on its control pipe and for
    # reparenting, which together cover every way the parent can go away.
    parent = os.getppid()
    for fd in (fd_a, fd_b):
        os.set_blocking(fd, False)

    dirs = {
        fd_a: {
            "name": "a_to_b",
            "out": fd_b,
            "q": collections.deque(),
            "queued_bytes": 0,
            "packets": 0,
            "bytes": 0,
            "dropped_down": 0,
            "dropped_full": 0,
            "write_errors": 0,
        },
        fd_b: {
            "name": "b_to_a",
            "out": fd_a,
            "q": collections.deque(),
            "queued_bytes": 0,
            "packets": 0,
            "bytes": 0,
            "dropped_down": 0,
            "dropped_full": 0,
            "write_errors": 0,
        },
    }
    down = False
    ctl_buf = b""
    monotonic = time.monotonic
    read = os.read
    write = os.write
    rlist = [fd_a, fd_b, ctl_in]
    last_parent_check = monotonic()
    # Wake-up latency of a timed select, learnt as it happens and kept per
    # power-of-two bucket of sleep length because it grows with the sleep on
    # the lab VMs (about 0.03 ms for sub-ms waits, 0.2 ms for 10 ms ones).
    # The relay sleeps that much less and releases packets due within it, so
    # the mean hold is the configured delay rather than delay + latency on
    # each of the two legs of a round trip.
    leads = [0.0] * 8
    lead = 0.0

    def send(d, pkt):
        try:
            write(d["out"], pkt)
            d["packets"] += 1
            d["bytes"] += len(pkt)
        except OSError:
            # e.g. the other device was set down by someone: that is loss.
            d["write_errors"] += 1

    os.write(ctl_out, b"ready\n")
    while True:
        # Release every packet that is due and find when the next one is.
        now = monotonic()
        wait = 1.0
        timed = False
        for d in dirs.values():
            q = d["q"]
            while q and q[0][0] <= now + lead:
                _, pkt = q.popleft()
                d["queued_bytes"] -= len(pkt)
                send(d, pkt)
            if q:
                timed = True
                wait = min(wait, q[0][0] - now)
        bucket = min(int(wait * 1000).bit_length(), 7)
        lead = leads[bucket] if timed else 0.0
        timeout = max(wait - lead, 0.0)
        # select() takes microseconds (epoll/poll round up to whole ms).
        before = monotonic()
        try:
            ready, _, _ = select.select(rlist, [], [], timeout)
        except InterruptedError:
            continue
        now = monotonic()
        if timed and not ready and timeout > 0:
            late = now - before - timeout
            # Clipped: one late wake-up under CPU contention must not make
            # the next packets leave early.
            late = min(max(late, 0.0), _MAX_LEAD)
            leads[bucket] = 0.8 * leads[bucket] + 0.2 * late
        if now - last_parent_check >= 1.0:
            last_parent_check = now
            if os.getppid() != parent:
                return
        for fd in ready:
            if fd == ctl_in:
                chunk = read(ctl_in, 4096)
                if not chunk:
                    return
                ctl_buf += chunk
                while b"\n" in ctl_buf:
                    line, ctl_buf = ctl_buf.split(b"\n", 1)
                    cmd = line.strip()
                    if cmd == b"down":
                        down = True
                        for d in dirs.values():
                            d["dropped_down"] += len(d["q"])
                            d["q"].clear()
                            d["queued_bytes"] = 0
                        reply = b"ok\n"
                    elif cmd == b"up":
                        down = False
                        reply = b"ok\n"
                    elif cmd == b"stats":
                        reply = (
                            json.dumps(
                                {
                                    d["name"]: {k: v for k, v in d.items() if k not in ("name", "out", "q")}
                                    for d in dirs.values()
                                }
                                | {"down": down, "timer_lead_us": [round(x * 1e6) for x in leads]}
                            ).encode()
                            + b"\n"
                        )
                    else:
                        reply = b"error unknown command\n"
                    os.write(ctl_out, reply)
                continue
            d = dirs[fd]
            q = d["q"]
            due = now + delay
            for _ in range(_BATCH):
                try:
                    pkt = read(fd, _READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        break
                    raise
                if down:
                    d["dropped_down"] += 1
                elif delay <= 0:
                    send(d, pkt)
                elif d["queued_bytes"] + len(pkt) > _QUEUE_LIMIT_BYTES:
                    d["dropped_full"] += 1
                else:
                    q.append((due, pkt))
                    d["queued_bytes"] += len(pkt)


def _main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description="TUN-to-TUN delay relay (internal)")
    p.add_argument("--fd-a", type=int, required=True)
    p.add_argument("--fd-b", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument(
        "--vnet-hdr", action="store_true", help="accepted for clarity; the virtio header is passed through as is"
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _prctl_setup()
    _relay(args.fd_a, args.fd_b, args.delay_ms / 1000.0, sys.stdin.fileno(), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
