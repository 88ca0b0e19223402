"""The agent's view of the server's loopback for `nbremote forward`, against real sockets."""

from __future__ import annotations

import os
import socket

import pytest

from nbremote.errors import ExitCode, NbremoteError


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_our_listener_is_listed_with_our_pid_and_command(box, listener):
    rows = {r["port"]: r for r in box.call("listening", {})["listening"]}
    assert rows[listener]["pid"] == os.getpid()
    assert "pytest" in rows[listener]["command"]


def test_a_port_of_ours_passes_the_check(box, listener):
    assert box.call("port_check", {"port": listener}) == {"port": listener}


def test_nothing_listening_is_refused_with_how_to_find_one(box):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    with pytest.raises(NbremoteError) as caught:
        box.call("port_check", {"port": free})
    assert caught.value.message == f"nothing listens on port {free} of this machine's loopback"
    assert caught.value.exit_code == ExitCode.ERROR
    assert "`nbremote forward HOST` lists" in caught.value.hint


@pytest.mark.parametrize("port", [0, 70000, "6006", True, None])
def test_a_port_that_is_not_one_is_a_bad_request(box, port):
    with pytest.raises(NbremoteError) as caught:
        box.call("port_check", {"port": port})
    assert caught.value.message == "port must be a number from 1 to 65535"
