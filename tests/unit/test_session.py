"""session.py's pure parts, localnet's ports and probe, the laptop's session records, its private dirs."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from nbremote import paths, sessions
from nbremote.errors import ExitCode, NbremoteError
from nbremote.localnet import Poller, any_free_port, port_free, probe
from nbremote.servers import ServerInfo, parse_server, url_for, validate_text
from nbremote.sessions import SessionRecord

TOKEN = "0123456789abcdef0123456789abcdef0123456789abcdef"
GOOD = {
    "dir": "/home/alice/proj",
    "mode": "lab",
    "port": 8888,
    "pid": 4242,
    "token": TOKEN,
    "launcher": "tmux",
    "started": 1764100000.5,
    "kernels": 2,
    "busy": 1,
    "last_activity": "2026-11-25T20:00:00.000000Z",
    "env": None,
    "tmux_session": "nbremote-jupyter-x",
}


# --- parse_server ---------------------------------------------------------------


def test_parse_server_accepts_a_full_document():
    assert parse_server(GOOD, "gpubox") == ServerInfo(
        dir="/home/alice/proj",
        mode="lab",
        port=8888,
        pid=4242,
        token=TOKEN,
        launcher="tmux",
        started=1764100000.5,
        kernels=2,
        busy=1,
        last_activity="2026-11-25T20:00:00.000000Z",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "notebook", "port": 1, "pid": 1},
        {"port": 65535, "pid": 2**22, "token": "A" * 16},
        {"token": "z" * 128, "dir": "/srv/d i r/ü"},
    ],
)
def test_parse_server_accepts_edges(changes):
    info = parse_server({**GOOD, **changes}, "gpubox")
    assert {k: getattr(info, k) for k in changes} == changes


def test_parse_server_drops_optional_fields_of_the_wrong_type():
    info = parse_server({**GOOD, "kernels": "2", "busy": None, "last_activity": 5, "started": "yesterday"}, "h")
    assert (info.kernels, info.busy, info.last_activity, info.started) == (None, None, None, 0.0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"port": 0}, "the agent on gpubox sent an invalid port: 0"),
        ({"port": 65536}, "the agent on gpubox sent an invalid port: 65536"),
        ({"port": -1}, "the agent on gpubox sent an invalid port: -1"),
        ({"port": "8888"}, "the agent on gpubox sent an invalid port: '8888'"),
        ({"port": 8888.0}, "the agent on gpubox sent an invalid port: 8888.0"),
        ({"port": True}, "the agent on gpubox sent an invalid port: True"),
        ({"port": None}, "the agent on gpubox sent an invalid port: None"),
        ({"pid": 0}, "the agent on gpubox sent an invalid pid: 0"),
        ({"pid": -5}, "the agent on gpubox sent an invalid pid: -5"),
        ({"pid": 2**31 + 1}, f"the agent on gpubox sent an invalid pid: {2**31 + 1}"),
        ({"pid": "4242"}, "the agent on gpubox sent an invalid pid: '4242'"),
        ({"pid": False}, "the agent on gpubox sent an invalid pid: False"),
        ({"token": "short"}, "the agent on gpubox sent an invalid token"),
        ({"token": "a" * 129}, "the agent on gpubox sent an invalid token"),
        ({"token": TOKEN + "\n"}, "the agent on gpubox sent an invalid token"),
        ({"token": TOKEN[:20] + "&x=1"}, "the agent on gpubox sent an invalid token"),
        ({"token": TOKEN[:20] + " " + TOKEN[:20]}, "the agent on gpubox sent an invalid token"),
        ({"token": 1234567890123456789}, "the agent on gpubox sent an invalid token"),
        ({"token": None}, "the agent on gpubox sent an invalid token"),
        ({"mode": "classic"}, "the agent on gpubox sent an invalid server mode: 'classic'"),
        ({"mode": None}, "the agent on gpubox sent an invalid server mode: None"),
        ({"dir": 5}, "the agent on gpubox sent an invalid directory: 5"),
        ({"dir": "relative/dir"}, "the agent on gpubox sent an invalid directory: 'relative/dir'"),
        ({"dir": "/" + "a" * 5000}, "the agent on gpubox sent an invalid directory: '/" + "a" * 77 + "…"),
        ({"dir": "/home/\u202eevil"}, "the agent on gpubox sent an invalid directory: '/home/\\u202eevil'"),
        ({"launcher": "tmux; rm -rf ~"}, "the agent on gpubox sent an invalid launcher: 'tmux; rm -rf ~'"),
        ({"launcher": None}, "the agent on gpubox sent an invalid launcher: None"),
        ({"dir": ""}, "the agent on gpubox sent an invalid directory: ''"),
        ({"dir": "/home/a\nb"}, "the agent on gpubox sent an invalid directory: '/home/a\\nb'"),
        ({"dir": "/home/a\x1b[2Jb"}, "the agent on gpubox sent an invalid directory: '/home/a\\x1b[2Jb'"),
    ],
)
def test_parse_server_rejects(changes, message):
    with pytest.raises(NbremoteError) as caught:
        parse_server({**GOOD, **changes}, "gpubox")
    # The server's fault, not the user's: never USAGE.
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert caught.value.message == message


@pytest.mark.parametrize("doc", [None, [], "server", 5])
def test_parse_server_needs_an_object(doc):
    with pytest.raises(NbremoteError) as caught:
        parse_server(doc, "gpubox")
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert caught.value.message == "the agent on gpubox sent no server"


# --- validate_text ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["~", "proj", "~/work/a b", "/srv/ü/日本", "a;b$(x)`y`"])
def test_validate_text_accepts(value):
    assert validate_text(value, "directory") is value


@pytest.mark.parametrize("value", ["", "a\nb", "a\rb", "a\tb", "\x00", "x\x1b[31m", "x\x7f", "end\n"])
def test_validate_text_rejects_naming_the_value(value):
    with pytest.raises(NbremoteError) as caught:
        validate_text(value, "environment")
    assert caught.value.exit_code == ExitCode.USAGE
    assert caught.value.message.startswith(f"environment {value!r} is not valid")


# --- ports and URLs -----------------------------------------------------------------


def test_port_free_sees_a_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port)
    assert port_free(port)


def test_any_free_port_is_free():
    port = any_free_port()
    assert 1024 <= port <= 65535
    assert port_free(port)


@pytest.mark.parametrize("mode, path", [("lab", "/lab"), ("notebook", "/tree")])
def test_url_for(mode, path):
    assert url_for(8123, mode, TOKEN) == f"http://127.0.0.1:8123{path}?token={TOKEN}"


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        ok = self.path == "/api/status" and self.headers.get("Authorization") == f"token {TOKEN}"
        self.send_response(200 if ok else 403)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_jupyter():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_probe_needs_the_right_token(fake_jupyter):
    assert probe(fake_jupyter, TOKEN, time.monotonic() + 5)
    started = time.monotonic()
    assert not probe(fake_jupyter, "wrong" + TOKEN, time.monotonic() + 0.3)
    assert time.monotonic() - started < 3


def test_probe_gives_up_at_the_deadline_when_nothing_listens():
    port = any_free_port()
    started = time.monotonic()
    assert not probe(port, TOKEN, time.monotonic() + 0.3)
    assert time.monotonic() - started < 3


def test_the_poller_answers_once_jupyter_answers_to_its_token(fake_jupyter):
    poller = Poller(fake_jupyter, TOKEN)
    assert poller.wait(time.monotonic() + 5)
    wrong = Poller(fake_jupyter, "wrong" + TOKEN)
    started = time.monotonic()
    assert not wrong.wait(time.monotonic() + 0.3)
    assert time.monotonic() - started < 3


def test_the_poller_keeps_trying_until_something_listens():
    port = any_free_port()
    poller = Poller(port, TOKEN)
    time.sleep(0.1)  # refused attempts meanwhile
    assert not poller.answered.is_set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert poller.wait(time.monotonic() + 5)
    finally:
        server.shutdown()
        server.server_close()


# --- the laptop's session records ---------------------------------------------------


def _record(**changes) -> SessionRecord:
    fields = dict(
        host="gpubox",
        dir="~",
        remote_dir="/home/alice",
        local_port=8888,
        remote_port=40000,
        token=TOKEN,
        pid=4242,
        mode="lab",
        updated=1764100000.0,
    )
    return SessionRecord(**{**fields, **changes})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sessions_save_find_remove(isolated):
    first, other_dir, other_host = _record(), _record(dir="proj"), _record(host="", local_port=9999)
    for record in (first, other_dir, other_host):
        sessions.save(record)
    assert sessions.find("gpubox", "~") == first
    assert sessions.find("gpubox", "nope") is None
    assert sorted(r.dir for r in sessions.for_host("gpubox")) == ["proj", "~"]
    assert sessions.for_host("") == [other_host]
    sessions.save(_record(local_port=7777))
    assert sessions.find("gpubox", "~").local_port == 7777
    sessions.remove([first, other_host])
    assert list(sessions.load_all().values()) == [other_dir]


def test_sessions_file_is_private(isolated):
    sessions.save(_record())
    folder = isolated.state / "nbremote"
    assert _mode(folder) == 0o700
    assert _mode(folder / "sessions.json") == 0o600
    assert [p.name for p in folder.iterdir()] == ["sessions.json"], "no temp file may be left behind"


def test_state_dir_tightens_a_loose_existing_dir(isolated):
    folder = isolated.state / "nbremote"
    folder.mkdir(parents=True, mode=0o755)
    os.chmod(folder, 0o755)
    sessions.save(_record())
    assert _mode(folder) == 0o700


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[1, 2]",
        "null",
        '{"gpubox\\u0000~": {"host": "gpubox"}}',
        '{"gpubox\\u0000~": "a string"}',
        '{"gpubox\\u0000~": {"host": "gpubox", "dir": "~", "from_the_future": 1}}',
    ],
)
def test_corrupt_session_file_is_tolerated(isolated, content):
    folder = isolated.state / "nbremote"
    folder.mkdir(parents=True)
    (folder / "sessions.json").write_text(content)
    assert sessions.find("gpubox", "~") is None
    sessions.save(_record())
    assert sessions.find("gpubox", "~") == _record()


def test_a_valid_record_survives_a_corrupt_neighbour(isolated):
    folder = isolated.state / "nbremote"
    folder.mkdir(parents=True)
    good = _record()
    (folder / "sessions.json").write_text(json.dumps({good.key: good.__dict__, "junk": {"x": 1}}))
    assert sessions.load_all() == {good.key: good}


# --- private directories --------------------------------------------------------------


def test_write_private_is_0600_and_atomic(tmp_path):
    target = tmp_path / "secret.json"
    paths.write_private(target, "one")
    paths.write_private(target, "two")
    assert target.read_text() == "two"
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_runtime_dir_is_private_under_xdg_runtime_dir(isolated):
    folder = paths.runtime_dir()
    assert folder == isolated.runtime / "nbremote"
    assert _mode(folder) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_runtime_dir_refuses_a_directory_of_another_user(isolated):
    # In a shared /tmp, another user can create our directory first and read our control sockets.
    taken = isolated.runtime / "nbremote"
    taken.mkdir()
    os.chmod(taken, 0o777)
    os.chown(taken, 65534, 65534)  # nobody
    with pytest.raises(NbremoteError) as caught:
        paths.runtime_dir()
    assert caught.value.message == f"{taken} belongs to another user"
    assert "XDG_RUNTIME_DIR" in caught.value.hint
    assert _mode(taken) == 0o777, "someone else's directory must be left alone"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_runtime_dir_fallback_in_tmp_refuses_another_users_directory(isolated, monkeypatch, tmp_path):
    shared_tmp = tmp_path / "shared-tmp"
    shared_tmp.mkdir(mode=0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    taken = shared_tmp / f"nbremote-{os.getuid()}"
    taken.mkdir()
    os.chown(taken, 65534, 65534)
    with pytest.raises(NbremoteError) as caught:
        paths.runtime_dir()
    assert str(taken) in caught.value.message


# --- up --socket --------------------------------------------------------------------


def test_parse_server_takes_a_socket_in_place_of_a_port():
    sock = "/home/alice/.local/state/nbremote/sockets/0123456789abcdef.sock"
    info = parse_server({**GOOD, "port": None, "sock": sock}, "gpubox")
    assert info.port == sock


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"port": None, "sock": "relative.sock"}, "the agent on gpubox sent an invalid socket: 'relative.sock'"),
        ({"port": None, "sock": "/tmp/a\nb"}, "the agent on gpubox sent an invalid socket: '/tmp/a\\nb'"),
        ({"port": 8888, "sock": "/tmp/s.sock"}, "the agent on gpubox sent an invalid socket: '/tmp/s.sock'"),
        ({"port": None, "sock": 5}, "the agent on gpubox sent an invalid socket: 5"),
    ],
)
def test_parse_server_rejects_a_bad_socket(changes, message):
    with pytest.raises(NbremoteError) as caught:
        parse_server({**GOOD, **changes}, "gpubox")
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert caught.value.message == message
