"""Local ports: is one free, pick one, and does Jupyter answer on it."""
from __future__ import annotations

import socket
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
            raise NbremoteError(f"local port {requested} is busy",
                                hint="pick another with --port, or leave --port out to take a free one",
                                exit_code=ExitCode.PORT_BUSY)
        return requested
    if previous is not None and port_free(previous):
        return previous
    return any_free_port()


def _status_of(host: str, port: int, token: str, timeout: float) -> int | None:
    """One GET /api/status; the HTTP status, or None when nothing answered.

    A raw socket, not http.client: importing that (email, its parsers) cost `up` with a
    live master about 10 ms of its ~0.1 s before the first answer, and a status line is all
    this needs."""
    request = (f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: token {token}\r\n"
               "Connection: close\r\n\r\n").encode()
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


def probe(port: int, token: str, deadline: float, clock: Callable[[], float] = time.monotonic,
          host: str = "127.0.0.1") -> bool:
    """True once Jupyter answers /api/status with this token on local port (or on host:port)."""
    while True:
        if _status_of(host, port, token, max(0.5, deadline - clock())) == 200:
            return True
        if clock() >= deadline:
            return False
        time.sleep(0.02)
