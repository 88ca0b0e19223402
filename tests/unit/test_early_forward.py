"""The forward a warm `up HOST` begins before the client's modules are imported (early.py):
begun only while everything `up` remembered with it holds, taken by the ordinary path when it
asks for the same argv, and cancelled when that path did not take it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from nbremote import early, sessions, ssh
from nbremote.errors import NbremoteError
from nbremote.sessions import SessionRecord

WORDS = ["gpubox", "--no-browser"]


@pytest.fixture(autouse=True)
def fresh_state():
    yield
    early.words = None
    early.settle()


def _ssh_standin(log: Path, code: int = 0) -> list[str]:
    """A command shaped like `ssh ... -O forward -L SPEC -- HOST` that logs its words after
    ssh (sh's $0)."""
    script = f'echo "$*" >> {log}; exit {code}'
    return ["sh", "-c", script, "ssh", "-O", "forward", "-L", "127.0.0.1:18888:127.0.0.1:38119", "--", "gpubox"]


def _remember(tmp_path: Path, argv: list[str], *, words: list[str] = WORDS) -> Path:
    """A session saved and its forward remembered for words, as `up` leaves them."""
    record = SessionRecord("gpubox", "~", "/home/me", 18888, 38119, "t" * 32, 4242, "lab", 0.0)
    sessions.save(record)
    control = tmp_path / "control"
    control.write_text("")
    early.words = words
    early.hint(
        argv, control, sessions.keeper_pid_file("gpubox", "~"), sessions.fields_of(record, "token", "local_port")
    )
    early.words = None
    return control


def test_a_remembered_forward_begins_and_up_takes_its_outcome(tmp_path):
    log = tmp_path / "ssh.log"
    argv = _ssh_standin(log)
    _remember(tmp_path, argv)
    early.begin(list(WORDS))
    assert early.claim(argv[:-1] + ["otherbox"]) is None  # another forward is not this one
    done = early.claim(argv)
    assert done is not None and done.returncode == 0
    assert early.claim(argv) is None  # taken once
    early.settle()
    assert log.read_text().splitlines() == ["-O forward -L 127.0.0.1:18888:127.0.0.1:38119 -- gpubox"]


def test_a_forward_up_did_not_take_is_cancelled(tmp_path):
    log = tmp_path / "ssh.log"
    _remember(tmp_path, _ssh_standin(log))
    early.begin(list(WORDS))
    early.settle()
    assert log.read_text().splitlines() == [
        "-O forward -L 127.0.0.1:18888:127.0.0.1:38119 -- gpubox",
        "-O cancel -L 127.0.0.1:18888:127.0.0.1:38119 -- gpubox",
    ]


def test_a_refused_forward_is_not_cancelled(tmp_path):
    log = tmp_path / "ssh.log"
    _remember(tmp_path, _ssh_standin(log, code=255))
    early.begin(list(WORDS))
    early.settle()
    assert log.read_text().splitlines() == ["-O forward -L 127.0.0.1:18888:127.0.0.1:38119 -- gpubox"]


def _no_socket(tmp_path: Path, control: Path) -> None:
    control.unlink()


def _keeper_alive(tmp_path: Path, control: Path) -> object:
    handle = open(sessions.keeper_pid_file("gpubox", "~"), "w")  # noqa: SIM115  held for the test
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _session_down(tmp_path: Path, control: Path) -> None:
    sessions.remove(sessions.for_host("gpubox"))


def _another_server(tmp_path: Path, control: Path) -> None:
    sessions.save(SessionRecord("gpubox", "~", "/home/me", 18888, 38119, "u" * 32, 4343, "lab", 1.0))


def _hint_garbled(tmp_path: Path, control: Path) -> None:
    for hint in (tmp_path / "run" / "nbremote").glob("forward-*.json"):
        hint.write_text("{not json")


def _hint_not_a_list(tmp_path: Path, control: Path) -> None:
    for hint in (tmp_path / "run" / "nbremote").glob("forward-*.json"):
        remembered = json.loads(hint.read_text())
        hint.write_text(json.dumps({**remembered, "argv": " ".join(remembered["argv"])}))


@pytest.mark.parametrize(
    "change", [_no_socket, _keeper_alive, _session_down, _another_server, _hint_garbled, _hint_not_a_list]
)
def test_nothing_begins_unless_all_that_was_remembered_holds(tmp_path, change):
    log = tmp_path / "ssh.log"
    control = _remember(tmp_path, _ssh_standin(log))
    held = change(tmp_path, control)
    early.begin(list(WORDS))
    early.settle()
    assert not log.exists()
    assert early.words == WORDS  # the words are kept: this command's `up` remembers its forward
    del held


def test_other_words_begin_nothing(tmp_path):
    log = tmp_path / "ssh.log"
    _remember(tmp_path, _ssh_standin(log))
    early.begin([*WORDS, "--lab"])
    early.settle()
    assert not log.exists()


def test_nothing_is_remembered_outside_the_console_script(tmp_path):
    early.hint(["ssh"], tmp_path, tmp_path, (tmp_path, "k", {}))
    assert not (tmp_path / "run" / "nbremote").exists()


def test_connection_forward_takes_the_begun_forwards_refusal(tmp_path):
    """A control path with no master behind it: the begun `ssh -O forward` fails, and forward
    reports that failure as its own (the port's message), running no second ssh."""
    conn = ssh.Connection(ssh.parse_target("gpubox"), control_dir=tmp_path, timeout=1, batch=True, persist=True)
    argv = conn.forward_argv(18888, 38119)
    conn.control_path.write_text("")
    early.words = WORDS
    record = SessionRecord("gpubox", "~", "/home/me", 18888, 38119, "t" * 32, 4242, "lab", 0.0)
    sessions.save(record)
    early.hint(argv, conn.control_path, sessions.keeper_pid_file("gpubox", "~"), sessions.fields_of(record, "token"))
    early.begin(list(WORDS))
    assert early._begun is not None
    with pytest.raises(NbremoteError, match="local port 18888 is busy"):
        conn.forward(18888, 38119)
    assert early._begun is None


def _status_server(status: int) -> tuple[int, list[bytes]]:
    """A loopback port that answers one request with this HTTP status (a stand-in for Jupyter
    behind the forward), and the requests it read."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    seen: list[bytes] = []

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                seen.append(conn.recv(4096))
                conn.sendall(f"HTTP/1.1 {status} X\r\n\r\n".encode())

    threading.Thread(target=answer, daemon=True).start()
    return server.getsockname()[1], seen


@pytest.mark.parametrize(("status", "code", "expected"), [(200, 0, True), (403, 0, False), (200, 255, False)])
def test_the_begun_forward_asks_the_server_once_with_the_token(tmp_path, status, code, expected):
    port, seen = _status_server(status)
    record = SessionRecord("gpubox", "~", "/home/me", port, 38119, "t" * 32, 4242, "lab", 0.0)
    sessions.save(record)
    argv = _ssh_standin(tmp_path / "ssh.log", code)
    early.words = WORDS
    early.hint(argv, tmp_path, sessions.keeper_pid_file("gpubox", "~"), sessions.fields_of(record, "token"))
    early.begin(list(WORDS))
    assert early.claim(argv) is not None
    assert early.answered(port, "t" * 32) is expected
    assert early.answered(port, "t" * 32) is False  # asked once
    if code == 0:
        assert b"Authorization: token " + b"t" * 32 in seen[0]
    else:  # a refused forward proves nothing about the port: no token sent
        assert seen == []


def test_another_session_is_not_answered_for(tmp_path):
    port, _ = _status_server(200)
    record = SessionRecord("gpubox", "~", "/home/me", port, 38119, "t" * 32, 4242, "lab", 0.0)
    sessions.save(record)
    argv = _ssh_standin(tmp_path / "ssh.log")
    early.words = WORDS
    early.hint(argv, tmp_path, sessions.keeper_pid_file("gpubox", "~"), sessions.fields_of(record, "token"))
    early.begin(list(WORDS))
    assert early.claim(argv) is not None
    assert early.answered(port, "u" * 32) is False
