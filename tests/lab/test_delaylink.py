"""Tests for the user-space delay link (tests/lab/delaylink.py).

They build two throwaway namespaces joined only by the link, never touching
the root namespace's routes to the lab range except for a blackhole guard.
Needs root, iproute2 and /dev/net/tun; skipped otherwise unless
NBREMOTE_REQUIRE_LAB=1, where a missing lab is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delaylink import DelayLink, DelayLinkError, icmp_ping, run_in_netns  # noqa: E402

LAB_NET = "192.168.77.0/24"
ADDR_A = "192.168.77.10"  # the "laptop" end
ADDR_B = "192.168.77.2"  # the "server" end
IFNAME = "nbrtun0"


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if shutil.which("ip") is None:
        return "iproute2 'ip' not found"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing"
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns' unavailable: {r.stderr.strip()}"
    return None


def _require_lab() -> None:
    reason = _lab_unavailable()
    if reason is None:
        return
    if os.environ.get("NBREMOTE_REQUIRE_LAB") == "1":
        pytest.fail(f"lab required (NBREMOTE_REQUIRE_LAB=1) but {reason}")
    pytest.skip(reason)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _link_in(ns: str, ifname: str = IFNAME) -> bool:
    return _ip("-n", ns, "link", "show", "dev", ifname, check=False).returncode == 0


def _root_has_lab_address() -> bool:
    out = _ip("-4", "-o", "addr", "show").stdout
    return " 192.168.77." in out


@pytest.fixture(scope="module")
def blackhole_guard():
    """Drop anything the root namespace sends to the lab range on this host,
    so a test bug cannot send lab traffic out of the real default route."""
    _require_lab()
    # A metric of our own makes this route ours alone: the shared lab
    # (netlab) adds and deletes the metric-0 one, possibly in another
    # process at the same time, and neither must remove the other's guard.
    metric = str(100000 + os.getpid())
    _ip("route", "replace", "blackhole", LAB_NET, "metric", metric)
    try:
        yield
    finally:
        _ip("route", "del", "blackhole", LAB_NET, "metric", metric, check=False)


@pytest.fixture
def nspair(blackhole_guard):
    tag = uuid.uuid4().hex[:6]
    names = [f"nbr-dl-{tag}-a", f"nbr-dl-{tag}-b"]
    made = []
    try:
        for ns in names:
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)
    assert not _root_has_lab_address(), "a lab address leaked into the root namespace"


@pytest.fixture
def link_factory(nspair):
    links = []

    def make(delay_ms: float, **kw) -> DelayLink:
        link = DelayLink.start(nspair[0], ADDR_A, nspair[1], ADDR_B, delay_ms, **kw)
        links.append(link)
        return link

    yield make
    for link in links:
        link.stop()


# --------------------------------------------------------------------------
# in-namespace TCP helpers (sockets are created in a thread that joined the
# namespace; they stay there, so no traffic touches the root namespace)


def _listen(ns: str, addr: str) -> socket.socket:
    def make():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 0))
        s.listen(4)
        return s

    return run_in_netns(ns, make)


def _connect(ns: str, addr: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = run_in_netns(ns, socket.create_connection, (addr, port), timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _serve_echo(lsock: socket.socket) -> threading.Thread:
    def run():
        with lsock:
            conn, _ = lsock.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# The sink runs as its own process so that the measured rate is not limited
# by sender and receiver sharing one interpreter's lock.
_SINK = textwrap.dedent("""
    import socket, sys
    s = socket.socket()
    s.bind((sys.argv[1], 0)); s.listen(1)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
    buf = bytearray(1 << 20); n = 0
    while (k := c.recv_into(buf)):
        n += k
    c.sendall(str(n).encode())
""")


def _transfer(ns_a: str, ns_b: str, megabytes: int) -> float:
    """Send megabytes from ns_a to a sink in ns_b; return MB/s (MiB/s)."""
    sink = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns_b}", sys.executable, "-c", _SINK, ADDR_B], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(sink.stdout.readline())
        c = _connect(ns_a, ADDR_B, port, timeout=30)
        chunk = b"\0" * (1 << 20)
        t0 = time.monotonic()
        for _ in range(megabytes):
            c.sendall(chunk)
        c.shutdown(socket.SHUT_WR)
        got = int(c.recv(64))
        elapsed = time.monotonic() - t0
        c.close()
        assert got == megabytes << 20
        return megabytes / elapsed
    finally:
        sink.kill()
        sink.wait()


# --------------------------------------------------------------------------


@pytest.mark.parametrize("delay_ms", [0, 10, 50])
def test_rtt_is_twice_the_delay(link_factory, nspair, delay_ms):
    link_factory(delay_ms)
    icmp_ping(nspair[0], ADDR_B, count=1, timeout=2)  # first packet pays one-off costs
    rtts = icmp_ping(nspair[0], ADDR_B, count=9, interval=0.02, timeout=2)
    assert None not in rtts, rtts
    med = statistics.median(rtts)
    print(
        f"\nconfigured delay {delay_ms} ms each way: ping RTT median {med:.2f} ms "
        f"(min {min(rtts):.2f}, max {max(rtts):.2f})"
    )
    # The relay may release a packet up to 0.2 ms early (wake-up latency
    # compensation), hence the 0.5 ms allowance below 2*delay.
    assert min(rtts) >= 2 * delay_ms - 0.5
    assert med <= 2 * delay_ms + 3.0


def test_tcp_both_ways_with_delay(link_factory, nspair):
    ns_a, ns_b = nspair
    link_factory(10)
    for srv_ns, srv_addr, cli_ns in ((ns_b, ADDR_B, ns_a), (ns_a, ADDR_A, ns_b)):
        lsock = _listen(srv_ns, srv_addr)
        port = lsock.getsockname()[1]
        server = _serve_echo(lsock)
        with _connect(cli_ns, srv_addr, port) as c:
            times = []
            for i in range(5):
                msg = f"ping {i}".encode()
                t0 = time.monotonic()
                c.sendall(msg)
                assert c.recv(100) == msg
                times.append((time.monotonic() - t0) * 1000)
            med = statistics.median(times)
            print(f"\nTCP echo {cli_ns} -> {srv_ns}: median {med:.2f} ms")
            assert 19.5 <= med <= 25
        server.join(timeout=2)


@pytest.mark.parametrize("delay_ms,megabytes,floor", [(0, 50, 30.0), (10, 50, 10.0)])
def test_throughput(link_factory, nspair, delay_ms, megabytes, floor):
    link = link_factory(delay_ms)
    cpu0, t0 = link.cpu_seconds(), time.monotonic()
    rate = _transfer(nspair[0], nspair[1], megabytes)
    cpu = (link.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    stats = link.stats()["a_to_b"]
    print(
        f"\n{megabytes} MB at {delay_ms} ms each way: {rate:.0f} MB/s, "
        f"relay CPU {cpu * 100:.0f}% of a core, "
        f"{stats['packets']} packets of {stats['bytes'] // max(stats['packets'], 1)} B avg"
    )
    assert rate > floor
    assert stats["dropped_full"] == 0


def test_set_down_is_real_loss_and_up_restores(link_factory, nspair):
    ns_a, ns_b = nspair
    link = link_factory(5)
    lsock = _listen(ns_b, ADDR_B)
    _serve_echo(lsock)
    with _connect(ns_a, ADDR_B, lsock.getsockname()[1]) as c:
        c.sendall(b"before")
        assert c.recv(100) == b"before"

        link.set_down(True)
        assert icmp_ping(ns_a, ADDR_B, count=2, interval=0.05, timeout=0.3) == [None, None]
        # The send itself succeeds: the loss happens "in the network", so the
        # endpoint has to find out by timeouts, as in a real outage.
        c.sendall(b"during")
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(100)
        stats = link.stats()
        assert stats["down"] is True
        assert stats["a_to_b"]["dropped_down"] >= 3  # 2 pings + TCP retransmissions

        link.set_down(False)
        assert None not in icmp_ping(ns_a, ADDR_B, count=2, interval=0.02, timeout=1)
        # TCP recovers by itself on its next retransmission.
        c.settimeout(5)
        assert c.recv(100) == b"during"


def test_stop_removes_devices_and_relay(link_factory, nspair):
    ns_a, ns_b = nspair
    link = link_factory(0)
    pid = link.pid
    assert _link_in(ns_a) and _link_in(ns_b)
    assert not _ip("link", "show", "dev", IFNAME, check=False).returncode == 0, "TUN device in the root namespace"
    link.stop()
    assert not os.path.exists(f"/proc/{pid}")
    assert not _link_in(ns_a) and not _link_in(ns_b)
    link.stop()  # idempotent
    with pytest.raises(DelayLinkError):
        link.set_down(True)


def test_relay_opens_no_sockets(link_factory):
    link = link_factory(0)
    fd_dir = f"/proc/{link.pid}/fd"
    targets = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
    assert not [t for t in targets if t.startswith("socket:")], targets
    assert targets.count("/dev/net/tun") == 2


def _alive(pid: int) -> bool:
    # The orphaned relay is reaped by PID 1, which here is not systemd and
    # may be slow to do it: a zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_relay_exits_when_parent_is_killed(nspair):
    ns_a, ns_b = nspair
    here = os.path.dirname(os.path.abspath(__file__))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {here!r})
        from delaylink import DelayLink
        link = DelayLink.start({ns_a!r}, {ADDR_A!r}, {ns_b!r}, {ADDR_B!r}, 0)
        print(link.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        relay_pid = int(parent.stdout.readline())
        assert _link_in(ns_a)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(relay_pid) or _link_in(ns_a) or _link_in(ns_b)):
        time.sleep(0.05)
    assert not _alive(relay_pid), "relay outlived its parent"
    assert not _link_in(ns_a) and not _link_in(ns_b)
