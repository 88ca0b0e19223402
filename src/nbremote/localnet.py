"""Local ports: is one free, pick one, and does Jupyter answer on it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from nbremote.errors import ExitCode, NbremoteError


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # ssh binds with SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def any_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def choose_local_port(requested: int | None, previous: int | None) -> int:
    """`--port` if given and free; else the port this session had last time, so open
    browser tabs carry on; else any free one."""
    if requested is not None:
        if not port_free(requested):
            raise NbremoteError(
                f"local port {requested} is busy",
                hint="pick another with --port, or leave --port out to take a free one",
                exit_code=ExitCode.PORT_BUSY,
            )
        return requested
    if previous is not None and port_free(previous):
        return previous
    return any_free_port()


def status_of(host: str, port: int, token: str, timeout: float) -> int | None:
    """One GET /api/status; the HTTP status, or None when nothing answered.

    A raw socket, not http.client: importing that (email, its parsers) cost `up` with a
    live master about 10 ms of its ~0.1 s before the first answer, and a status line is all
    this needs."""
    request = (
        f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: token {token}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return None
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def probe(
    port: int, token: str, deadline: float, clock: Callable[[], float] = time.monotonic, host: str = "127.0.0.1"
) -> bool:
    """True once Jupyter answers /api/status with this token on local port (or on host:port)."""
    while True:
        if status_of(host, port, token, max(0.5, deadline - clock())) == 200:
            return True
        if clock() >= deadline:
            return False
        time.sleep(0.02)


class Poller:
    """Polls GET /api/status with a token on a local port while Jupyter starts: an attempt
    every INTERVAL s, each in its own thread (through a forward one takes about two round
    trips), at most MAX_IN_FLIGHT at once, until one answers 200 or stop()."""

    INTERVAL = 0.025
    MAX_IN_FLIGHT = 8

    def __init__(self, port: int, token: str, host: str = "127.0.0.1"):
        self.port, self.token, self.host = port, token, host
        self.answered = threading.Event()
        self._stopped = threading.Event()
        self._slots = threading.BoundedSemaphore(self.MAX_IN_FLIGHT)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not (self._stopped.is_set() or self.answered.is_set()):
            if self._slots.acquire(blocking=False):
                threading.Thread(target=self._attempt, daemon=True).start()
            self._stopped.wait(self.INTERVAL)

    def _attempt(self) -> None:
        try:
            if not self._stopped.is_set() and status_of(self.host, self.port, self.token, 5.0) == 200:
                self.answered.set()
        finally:
            self._slots.release()

    def wait(self, deadline: float) -> bool:
        """True once an attempt got 200 (before deadline, CLOCK_MONOTONIC); stops polling either way."""
        answered = self.answered.wait(max(0.0, deadline - time.monotonic()))
        self.stop()
        return answered

    def stop(self) -> None:
        self._stopped.set()
