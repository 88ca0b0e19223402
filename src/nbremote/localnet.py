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


def probe(port: int, token: str, deadline: float, clock: Callable[[], float] = time.monotonic,
          host: str = "127.0.0.1") -> bool:
    """True once Jupyter answers /api/status with this token on local port (or on host:port)."""
    import http.client  # here, not at the top: `up` imports it while its first ssh logs in

    while True:
        conn = http.client.HTTPConnection(host, port, timeout=max(0.5, deadline - clock()))
        try:
            conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if clock() >= deadline:
            return False
        time.sleep(0.02)
