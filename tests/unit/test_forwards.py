"""Forwards beside Jupyter without a server: their spec, their record, the edge checks."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from nbremote import forwards, sessions
from nbremote.errors import ExitCode, NbremoteError
from nbremote.sessions import SessionRecord

from clirun import run_main


def _record(**kw) -> SessionRecord:
    base = dict(
        host="gpubox",
        dir="~",
        remote_dir="/home/me",
        local_port=8890,
        remote_port=41000,
        token="a" * 32,
        pid=10,
        mode="lab",
        updated=time.time(),
    )
    base.update(kw)
    return SessionRecord(**base)


@pytest.mark.parametrize(
    "text, ports", [("6006", (6006, None)), ("6006:16006", (6006, 16006)), ("1:65535", (1, 65535))]
)
def test_spec(text, ports):
    assert forwards.parse_spec(text) == ports


@pytest.mark.parametrize(
    "text", ["0", "70000", "6006:", ":6006", "6006:0", "abc", "6006:16006:1", "-1", " 6006", "6006\n"]
)
def test_bad_spec_names_the_value(text):
    with pytest.raises(NbremoteError) as caught:
        forwards.parse_spec(text)
    assert caught.value.message == f"'{text}' is not REMOTE_PORT or REMOTE_PORT:LOCAL_PORT"
    assert caught.value.exit_code == ExitCode.USAGE


def test_forwards_survive_the_sessions_file_and_a_bad_pair_forgets_the_record():
    sessions.save(_record(forwards=((6006, 6006), (18787, 8787))))
    assert sessions.find("gpubox", "~").forwards == ((6006, 6006), (18787, 8787))
    with pytest.raises(TypeError):
        _record(forwards=((6006, 70000),))
    with pytest.raises(TypeError):
        _record(forwards=((True, 6006),))


def test_an_older_record_has_no_forwards():
    doc = dataclasses.asdict(_record())
    del doc["forwards"]
    assert SessionRecord(**doc).forwards == ()


def test_no_session_is_a_usage_error():
    with pytest.raises(NbremoteError) as caught:
        forwards.session_for("gpubox", "~")
    assert caught.value.message == "no nbremote session on gpubox for ~"
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_busy_local_port_is_refused_before_anything_is_asked():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(NbremoteError) as caught:
            forwards._check_local(_record(), port)
    assert caught.value.message == f"local port {port} is busy"
    assert caught.value.exit_code == ExitCode.PORT_BUSY
    with pytest.raises(NbremoteError):  # the session's own Jupyter port
        forwards._check_local(_record(), 8890)


def test_removing_a_forward_that_is_not_there_changes_nothing():
    sessions.save(_record(forwards=((6006, 6006),)))
    with pytest.raises(NbremoteError) as caught:
        forwards.remove(None, sessions.find("gpubox", "~"), 8787, None)
    assert caught.value.message == "no forward to port 8787 in the session on gpubox"
    assert sessions.find("gpubox", "~").forwards == ((6006, 6006),)


@pytest.mark.parametrize(
    "args, named",
    [
        (["forward", "gpubox", "abc"], "'abc' is not REMOTE_PORT or REMOTE_PORT:LOCAL_PORT"),
        (["forward", "gpubox", "--remove"], "--remove needs the REMOTE_PORT"),
        (["forward", "a b", "6006"], "'a b' is not a host"),
        (["forward", "gpubox", "6006"], "no nbremote session on gpubox for ~"),
        (["up", "--forward", "6006"], "--forward needs a HOST"),
        (["up", "gpubox", "--forward", "99999"], "'99999' is not REMOTE_PORT"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(capsys, nothing_runs, args, named):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE
    assert named in err
    assert sessions.load_all() == {}


class _Agent:
    def __init__(self, reply):
        self.reply = reply

    def request(self, op, args, timeout):
        assert op == "listening"
        return self.reply


def _place(reply):
    from types import SimpleNamespace

    return SimpleNamespace(label="gpubox", host="gpubox", agent=lambda hello_timeout: _Agent(reply))


def test_the_listing_marks_what_is_forwarded_and_cleans_what_the_server_sent():
    record = _record(remote_port=41000, forwards=((16006, 6006),))
    reply = {
        "listening": [
            {"port": 6006, "pid": 7, "command": "tensorboard \x1b[2J--logdir runs"},
            {"port": 41000, "pid": 8, "command": "jupyter-lab"},
            {"port": 70000, "pid": 9, "command": "bogus"},
            "junk",
        ]
    }
    rows = forwards.listening(_place(reply), record, timeout=1)
    assert [(r["port"], r["local_port"]) for r in rows] == [(6006, 16006), (41000, 8890)]
    assert "\x1b" not in rows[0]["command"]


def test_forward_without_a_port_prints_the_listing(capsys, monkeypatch):
    from nbremote import cli

    monkeypatch.setattr(
        cli,
        "place_for",
        lambda *a, **k: _place({"listening": [{"port": 6006, "pid": 7, "command": "tensorboard --logdir runs"}]}),
    )
    code, out, err = run_main(capsys, "forward", "gpubox")
    assert code == 0
    assert out.split() == ["6006", "pid", "7", "tensorboard", "--logdir", "runs"]
