"""agentlink.py: the payload, the handshake, and AgentCall against real and fake agents.

The real ones run the shipped BOOTSTRAP on this machine's Python; the fake ones
are `sh -c` scripts that print exactly the lines a broken agent or shell would.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import shlex
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from nbremote import agentlink, servers
from nbremote.agent.main import OP_MODULES, handler_for
from nbremote.agentlink import BOOTSTRAP, AgentCall, Hello, parse_hello
from nbremote.errors import ExitCode, NbremoteError

AGENT_DIR = Path(agentlink.__file__).parent / "agent"
HELLO = json.dumps({"nbremote_agent": agentlink.PROTOCOL_VERSION, "hash": "0123456789ab", "python": "3.8.18"})


@pytest.fixture
def agent_env(isolated) -> dict[str, str]:
    """The agent's environment: conftest points HOME and XDG_* into tmp_path."""
    return dict(os.environ)


def _call(argv, env: dict[str, str] | None = None, **kw) -> AgentCall:
    """argv runs the bootstrap and gets the payload and request appended; a callable is used as is."""
    kw.setdefault("hello_timeout", 20)
    command = argv if callable(argv) else lambda request: [*argv, agentlink.bundle()[0], request]
    return AgentCall(command, where="this machine", on_ssh_failure=kw.pop("on_ssh_failure", None), env=env, **kw)


def _fake(*lines: str, exit_code: int = 0, stderr: str = ""):
    """An agent that prints these lines and exits, whatever the request."""
    script = f'err=$1; shift; printf \'%s\\n\' "$@"; printf %s "$err" >&2; exit {exit_code}'
    return lambda request: ["sh", "-c", script, "fake", stderr, *lines]


# --- payload ----------------------------------------------------------------------


def test_bundle_carries_every_agent_module_with_a_stable_hash():
    payload, digest = agentlink.bundle()
    # It rides on the command line: ASCII, and well under Linux's 128 KiB limit for one argument.
    assert payload.isascii() and len(payload) < 64 * 1024
    doc = json.loads(zlib.decompress(base64.b64decode(payload)))
    expected = {p.stem: p.read_text(encoding="utf-8") for p in AGENT_DIR.glob("*.py")}
    assert {"__init__", "main", "protocol", "jupyter", "state"} <= set(expected)
    assert set(doc["src"]) == set(expected)
    for name, text in doc["src"].items():
        assert _code(text) == _code(expected[name]), name
    assert doc["hash"] == digest
    assert len(digest) == 12 and int(digest, 16) >= 0
    agentlink.bundle.cache_clear()
    assert agentlink.bundle()[1] == digest, "the hash must depend only on the sources"


def _code(source: str) -> str:
    """What Python runs: the syntax tree, docstrings emptied."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                body[0].value.value = ""
    return ast.dump(tree)


@pytest.mark.parametrize("path", sorted(AGENT_DIR.glob("*.py")), ids=lambda p: p.name)
def test_the_shipped_agent_is_the_same_code_on_the_same_lines(path):
    source = path.read_text(encoding="utf-8")
    shipped = agentlink._compact(source)
    assert _code(shipped) == _code(source)
    assert shipped.count("\n") == source.count("\n")  # a traceback's line numbers are the source's
    assert len(shipped) < len(source)


def test_ups_command_fits_in_the_first_ten_segments_of_a_connection():
    # TCP's initial window: 10 segments of 1448 bytes (MTU 1500) before the first ACK.
    request = json.dumps({"id": 1, "op": "up", "args": {"dir": "~/" + "d" * 200, "env": "e" * 200}})
    assert len(agentlink.remote_command(request)) < 10 * 1448 - 200


def _siblings(path: Path) -> set[str]:
    """The agent modules path's source imports (at any depth) or runs from their text (module_source)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "module_source":
            found |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)}
    return found


@pytest.mark.parametrize("op", sorted(OP_MODULES))
def test_an_ops_bundle_carries_what_its_handler_needs_and_no_other_op(op):
    doc = json.loads(zlib.decompress(base64.b64decode(agentlink.bundle(op)[0])))
    shipped = set(doc["src"])
    needed, todo = {"__init__", "main"}, ["protocol", OP_MODULES[op]]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += _siblings(AGENT_DIR / f"{name}.py")
    assert shipped == needed
    assert handler_for(op).__module__ == f"nbremote.agent.{OP_MODULES[op]}"


def test_up_ships_well_under_half_the_agent():
    up = agentlink.remote_command(json.dumps({"id": 1, "op": "up", "args": {}}))
    assert len(up) < 0.5 * len(agentlink.remote_command("{}"))


def test_an_op_the_agent_does_not_know_ships_every_module():
    assert agentlink.bundle("no_such_op") == agentlink.bundle()


# --- hello -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "",
        "\n",
        "Welcome to Ubuntu 22.04.4 LTS (GNU/Linux 5.15.0-105-generic x86_64)\n",
        "Last login: Tue Nov 24 09:12:03 2026 from 192.168.77.1\n",
        "42\n",
        "null\n",
        "[1, 2]\n",
        '"nbremote_agent"\n',
        '{"motd": "be nice"}\n',
        "{not json\n",
    ],
)
def test_parse_hello_skips_noise(line):
    assert parse_hello(line) is None


def test_parse_hello_accepts_the_agents_hello():
    assert parse_hello(HELLO + "\n") == Hello(protocol=1, hash="0123456789ab", python="3.8.18")


@pytest.mark.parametrize(
    "doc",
    [
        {"nbremote_agent": 2, "hash": "abc", "python": "3.8.18"},
        {"nbremote_agent": 0, "hash": "abc", "python": "3.8.18"},
        {"nbremote_agent": "1", "hash": "abc", "python": "3.8.18"},
        {"nbremote_agent": 1, "python": "3.8.18"},
        {"nbremote_agent": 1, "hash": 5, "python": "3.8.18"},
        {"nbremote_agent": 1, "hash": "abc", "python": "3.8"},
        {"nbremote_agent": 1, "hash": "abc"},
    ],
)
def test_parse_hello_rejects_other_protocols(doc):
    with pytest.raises(NbremoteError) as caught:
        parse_hello(json.dumps(doc))
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert "another protocol" in caught.value.message


# --- the real bootstrap ---------------------------------------------------------


def test_bootstrap_answers_hello_and_a_request(agent_env):
    # -I: the agent must not need site-packages, PYTHONPATH or the nbremote package.
    reply = _call([sys.executable, "-I", "-c", BOOTSTRAP], agent_env).request("ls", {})
    assert reply == {"servers": []}


def test_bootstrap_reports_its_hash_and_python(agent_env):
    payload, digest = agentlink.bundle()
    request = json.dumps({"id": 1, "op": "ls", "args": {}})
    done = subprocess.run(
        [sys.executable, "-I", "-c", BOOTSTRAP, payload, request], capture_output=True, env=agent_env, timeout=20
    )
    hello = parse_hello(done.stdout.decode().splitlines()[0])
    assert hello.hash == digest
    assert hello.python == "%d.%d.%d" % sys.version_info[:3]


def test_bootstrap_reports_agent_errors(agent_env):
    # An unknown op shows the agent's error path end to end, through the real bootstrap.
    with pytest.raises(NbremoteError) as caught:
        _call([sys.executable, "-I", "-c", BOOTSTRAP], agent_env).request("reboot", {})
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert caught.value.message == "unknown operation 'reboot'"


def test_ping_times_a_round_trip_on_the_agents_own_channel(agent_env):
    # Each line reaches the agent 0.2 s after it was written: the round trip must include that.
    slow = (
        "python3 -c \"import sys, time\nfor l in sys.stdin: time.sleep(0.2); print(l, end='', flush=True)\" "
        '| "$0" -I -c "$1" "$2" "$3"'
    )
    call = _call(["sh", "-c", slow, sys.executable, BOOTSTRAP], agent_env)
    assert call.request("ls", {}, ping=True) == {"servers": []}
    assert call.round_trip is not None and 0.2 <= call.round_trip < 5


def test_no_ping_no_round_trip_and_stdin_left_alone(agent_env):
    call = _call([sys.executable, "-I", "-c", BOOTSTRAP], agent_env)
    assert call.request("ls", {}) == {"servers": []}
    assert call.round_trip is None


def test_agent_answers_each_ping_line_with_a_pong_before_its_final_line(agent_env):
    payload = agentlink.bundle()[0]
    for ping, pongs in ((True, 2), (False, 0)):
        doc = {"id": 7, "op": "ls", "args": {}, **({"ping": True} if ping else {})}
        done = subprocess.run(
            [sys.executable, "-I", "-c", BOOTSTRAP, payload, json.dumps(doc)],
            input=b"\n\n",
            capture_output=True,
            env=agent_env,
            timeout=20,
        )
        lines = [json.loads(line) for line in done.stdout.decode().splitlines()[1:]]
        assert lines == [{"id": 7, "event": "pong", "data": {}}] * pongs + [
            {"id": 7, "ok": True, "result": {"servers": []}}
        ]


def test_login_noise_before_hello_is_skipped(agent_env):
    banner = 'echo "Welcome to gpubox"; echo "{\\"motd\\": 1}"; echo; echo 42; exec "$0" -I -c "$1" "$2" "$3"'
    reply = _call(["sh", "-c", banner, sys.executable, BOOTSTRAP], agent_env).request("ls", {})
    assert reply == {"servers": []}


def test_local_argv_runs_the_bootstrap(agent_env):
    assert agentlink.local_argv("REQUEST")[2:] == [BOOTSTRAP, agentlink.bundle()[0], "REQUEST"]
    assert _call(agentlink.local_argv, agent_env).request("ls", {}) == {"servers": []}


# --- replies a client must not trust --------------------------------------------


@pytest.mark.parametrize(
    "reply, message",
    [
        ("this is not json", "the agent on this machine sent a line that is not JSON"),
        ("[1, 2]", "the agent on this machine sent a malformed reply"),
        ('{"ok": true}', "the agent on this machine sent a malformed reply"),
        ('{"ok": true, "result": 5}', "the agent on this machine sent a malformed reply"),
        ('{"event": "starting"}', "the agent on this machine sent a malformed reply"),
        ('{"event": "starting", "data": [1]}', "the agent on this machine sent a malformed reply"),
        ('{"id": 1}', "the agent on this machine sent a malformed reply"),
        ('{"ok": false}', "the agent on this machine sent a malformed error"),
        ('{"ok": false, "error": "boom"}', "the agent on this machine sent a malformed error"),
        ('{"ok": false, "error": {"code": "no_jupyter"}}', "the agent on this machine sent a malformed error"),
        # A line that is both a result and an event is neither: refused, not guessed at.
        ('{"ok": true, "result": {}, "event": 5}', "the agent on this machine sent a malformed reply"),
        ('{"event": "bad name; rm", "data": {}}', "the agent on this machine sent a malformed reply"),
    ],
)
def test_malformed_replies_are_agent_failures(reply, message):
    events = []
    call = _call(_fake(HELLO, reply))
    with pytest.raises(NbremoteError) as caught:
        call.request("up", {}, on_event=lambda *e: events.append(e))
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert caught.value.message == message
    assert events == []


def test_events_are_delivered_in_order_then_the_result():
    events = []
    argv = _fake(
        HELLO,
        '{"id":1,"event":"stale","data":{"pid":7}}',
        '{"id":1,"event":"starting","data":{"port":8888}}',
        '{"id":1,"ok":true,"result":{"x":1}}',
    )
    assert _call(argv).request("up", {}, on_event=lambda *e: events.append(e)) == {"x": 1}
    assert events == [("stale", {"pid": 7}), ("starting", {"port": 8888})]


@pytest.mark.parametrize(
    "code, exit_code",
    [
        ("no_jupyter", ExitCode.NO_JUPYTER),
        ("no_env", ExitCode.NO_JUPYTER),
        ("bad_dir", ExitCode.REMOTE_DIR),
        ("jupyter_exited", ExitCode.JUPYTER_FAILED),
        ("jupyter_timeout", ExitCode.JUPYTER_FAILED),
        ("launch_failed", ExitCode.JUPYTER_FAILED),
        ("agent_crashed", ExitCode.AGENT_FAILED),
        ("something_new", ExitCode.AGENT_FAILED),
    ],
)
def test_agent_errors_map_to_exit_codes(code, exit_code):
    error = {
        "code": code,
        "message": "no JupyterLab on the login PATH of the server",
        "hint": "pip it",
        "details": ["line 1", 2],
    }
    with pytest.raises(NbremoteError) as caught:
        _call(_fake(HELLO, json.dumps({"id": 1, "ok": False, "error": error}))).request("up", {})
    assert caught.value.exit_code == exit_code
    assert caught.value.message == "no JupyterLab on the login PATH of this machine"
    assert caught.value.hint == "pip it"
    assert caught.value.details == ["line 1", "2"]


def test_a_reply_before_hello_is_ignored_as_noise():
    # Without a hello the stream is not an agent's; its end is what gets reported.
    with pytest.raises(NbremoteError) as caught:
        _call(_fake('{"id":1,"ok":true,"result":{}}')).request("ls", {})
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert "stopped without answering (exit status 0)" in caught.value.message


# --- exits ---------------------------------------------------------------------------


def test_exit_97_is_no_python():
    with pytest.raises(NbremoteError) as caught:
        _call(["sh", "-c", "exit 97"]).request("ls", {})
    assert caught.value.exit_code == ExitCode.NO_PYTHON
    assert caught.value.message == "no python3 on this machine"
    assert "3.8" in caught.value.hint


def test_exit_255_goes_to_the_ssh_classifier():
    seen = []

    def on_ssh_failure(stderr: str) -> NbremoteError:
        seen.append(stderr)
        return NbremoteError("classified", exit_code=ExitCode.AUTH_FAILED)

    argv = _fake(exit_code=255, stderr="root@gpubox: Permission denied (publickey).\n")
    with pytest.raises(NbremoteError) as caught:
        _call(argv, on_ssh_failure=on_ssh_failure).request("ls", {})
    assert caught.value.message == "classified"
    assert seen == ["root@gpubox: Permission denied (publickey).\n"]


def test_a_crash_reports_the_exit_status_and_stderr_tail():
    stderr = "".join(f"line {i}\n" for i in range(15)) + "Traceback: boom\n"
    with pytest.raises(NbremoteError) as caught:
        _call(_fake(HELLO, exit_code=3, stderr=stderr)).request("ls", {})
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    assert "exit status 3" in caught.value.message
    assert caught.value.details[-1] == "Traceback: boom"
    assert len(caught.value.details) == 10


def test_silence_before_hello_times_out_as_unreachable():
    with pytest.raises(NbremoteError) as caught:
        _call(["sh", "-c", "exec sleep 30"], hello_timeout=0.3).request("ls", {})
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert "within 0.3 s" in caught.value.message


def test_silence_after_hello_times_out_as_agent_failure():
    argv = ["sh", "-c", "printf '%s\\n' \"$1\"; exec sleep 30", "fake", HELLO]
    with pytest.raises(NbremoteError) as caught:
        _call(argv).request("ls", {}, timeout=0.3)
    assert caught.value.exit_code == ExitCode.AGENT_FAILED


# --- the remote command --------------------------------------------------------------


def test_remote_command_is_one_quoted_string():
    request = json.dumps({"id": 1, "op": "up", "args": {"dir": "it's $(here); `x`"}})
    words = shlex.split(agentlink.remote_command(request))
    assert words[:2] == ["/bin/sh", "-lc"]
    assert words[3:] == ["sh", BOOTSTRAP, agentlink.bundle("up")[0], request]
    assert words[2].endswith("exit %d" % agentlink.NO_PYTHON_EXIT)


def _login_home(tmp_path: Path, agent_env: dict[str, str], path: str) -> dict[str, str]:
    # `sh -l` reads /etc/profile, which resets PATH on Debian; ~/.profile runs last, like a user's would.
    Path(agent_env["HOME"], ".profile").write_text(f"PATH={shlex.quote(path)}; export PATH\n")
    return dict(agent_env, PATH="/nonexistent")


def test_remote_command_without_python_exits_97(tmp_path, agent_env):
    env = _login_home(tmp_path, agent_env, "/nonexistent")
    done = subprocess.run(
        ["/bin/sh", "-c", agentlink.remote_command("{}")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=20,
    )
    assert done.returncode == agentlink.NO_PYTHON_EXIT
    assert "no python3 on the server" in done.stderr
    with pytest.raises(NbremoteError) as caught:
        _call(lambda request: ["/bin/sh", "-c", agentlink.remote_command(request)], env).request("ls", {})
    assert caught.value.exit_code == ExitCode.NO_PYTHON


@pytest.mark.parametrize("name", ["python3", "python"])
def test_remote_command_finds_python_on_the_login_path(tmp_path, agent_env, name):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / name).symlink_to(sys.executable)
    env = _login_home(tmp_path, agent_env, str(bin_dir))
    assert _call(lambda request: ["/bin/sh", "-c", agentlink.remote_command(request)], env).request("ls", {}) == {
        "servers": []
    }


def test_the_clients_protocol_constants_are_the_agents():
    # The agent cannot import the client's (it is shipped alone, stdlib only): each side has its
    # own copy, and this keeps them equal.
    from nbremote.agent import jupyter, protocol

    assert agentlink.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert agentlink.HELLO_KEY == protocol.HELLO_KEY
    assert servers.MODES == jupyter.MODES
    assert agentlink.parse_hello(json.dumps(protocol.hello("0123456789ab"))) is not None
