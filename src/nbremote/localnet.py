"""Local ports: is one free, pick one, and does Jupyter answer on it."""
from __future__ import annotations

import http.client
import socket
import time
from typing import Callable


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
        return sock.getsockname()[1]


def probe(port: int, token: str, deadline: float, clock: Callable[[], float] = time.monotonic) -> bool:
    """True once Jupyter answers /api/status with this token on local port."""
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=max(0.5, deadline - clock()))
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
