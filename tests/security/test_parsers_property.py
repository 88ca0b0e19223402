"""Guarantee 4 (parsers) and 3 (replies): whatever text or document comes in, the
parsers of the profile file, the invite line, addresses, host names and the
agent protocol either accept it or raise NbremoteError: never a crash, never
another exception. What they accept is then safe to use: a port is a port, a
path has no control character, a URL built from a reply points at 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nbremote import addresses, agentlink, invite, jobs, profiles, servers, servertext, ssh
from nbremote.agent import protocol
from nbremote.errors import NbremoteError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text biased toward what breaks parsers and shells: separators, quotes, substitutions,
# newlines, leading dashes, brackets, non-ASCII, controls.
NASTY = st.sampled_from(
    list(" \t\n\r\0\x1b\x7f\u202e'\"`$();|&<>\\#@:,[]=.-_/~*?{}%!") + ["$(id)", "`id`", "é", "日", "🙂"]
)
TEXT = st.lists(st.one_of(NASTY, st.characters(), st.text(max_size=4)), max_size=40).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def only_our_error(parse, value):
    try:
        return parse(value)
    except NbremoteError as exc:
        assert isinstance(exc.message, str) and exc.message
        return None


@FUZZ
@given(TEXT)
@example("nbr1:alice@192.168.1.2,[::1]:22#SHA256:" + "A" * 43)
@example("nbr1:-oProxyCommand=id@host:22#SHA256:" + "A" * 43)
@example("nbr1:a@$(id):22#SHA256:x")
def test_invite_lines(text):
    found = only_our_error(invite.parse, text)
    if found is not None:
        assert not found.user.startswith("-") and not _UNSAFE.search(found.user)
        assert all(addresses.is_host(h) for h in found.hosts) and 1 <= found.port <= 65535


@FUZZ
@given(TEXT)
@example("[::1]:22")
@example("-oProxyCommand=id")
@example("host:0")
def test_addresses(text):
    found = only_our_error(addresses.parse_address, text)
    if found is not None:
        assert addresses.is_host(found.host) and not found.host.startswith("-")
        assert found.port is None or 1 <= found.port <= 65535


@FUZZ
@given(TEXT)
@example("ssh://user@host:22")
@example("-oProxyCommand=touch /tmp/x")
@example("host\n")
def test_ssh_targets(text):
    found = only_our_error(ssh.parse_target, text)
    if found is not None:
        assert not found.destination.startswith("-")
        assert not any(c in found.destination for c in " \t\n'\"`$;&|<>()")


TOML_PIECES = st.sampled_from(
    [
        "[hosts.gpubox]\n",
        '[hosts."a b"]\n',
        "[hosts]\n",
        "[other]\n",
        'addresses = ["192.168.1.2"]\n',
        'addresses = "x"\n',
        'user = "alice"\n',
        'user = "-oProxyCommand=id"\n',
        "port = 22\n",
        "port = 0\n",
        'port = "22"\n',
        'key = "~/.ssh/id"\n',
        "[hosts.gpubox.up]\n",
        'dir = "$(id)"\n',
        'mode = "lab"\n',
        "mode = 5\n",
        'env = ""\n',
        "extra = 1\n",
        "hosts = 3\n",
        "= \n",
        "[[hosts.x]]\n",
        '"\n',
    ]
)


@FUZZ
@given(st.lists(st.one_of(TOML_PIECES, TEXT), max_size=12).map("".join))
def test_profile_files(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hosts.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        found = only_our_error(profiles.load, path)
    for name, profile in (found or {}).items():
        assert profile.user is None or not profile.user.startswith("-")
        assert all(addresses.is_host(a.host) for a in profile.addresses)


@FUZZ
@given(TEXT)
def test_hello_lines(text):
    hello = only_our_error(agentlink.parse_hello, text)
    if hello is not None:
        assert re.fullmatch(r"[0-9a-f]{12}", hello.hash)


def _reply_lines():
    shaped = st.fixed_dictionaries(
        {"id": JSON},
        optional={"ok": st.booleans() | JSON, "result": JSON, "error": JSON, "event": TEXT | JSON, "data": JSON},
    )
    return st.one_of(TEXT, JSON.map(json.dumps), shaped.map(json.dumps))


@FUZZ
@given(_reply_lines())
def test_agent_reply_lines(line):
    call = agentlink.AgentCall(lambda request: [], where="gpubox", on_ssh_failure=None, hello_timeout=1)
    reply = only_our_error(call._parse, line)
    if reply is not None:
        assert isinstance(reply, dict)


GOOD_SERVER = {
    "dir": "/home/alice",
    "mode": "lab",
    "port": 8888,
    "pid": 42,
    "token": "ab" * 24,
    "launcher": "tmux",
    "started": 1.0,
}


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GOOD_SERVER) + ["kernels", "busy", "last_activity"]), JSON))
def test_server_documents(changes):
    info = only_our_error(lambda doc: servers.parse_server(doc, "gpubox"), {**GOOD_SERVER, **changes})
    if info is not None:
        assert 1 <= info.port <= 65535 and info.dir.startswith("/") and not _UNSAFE.search(info.dir)
        url = servers.url_for(40000, info.mode, info.token)
        assert re.fullmatch(r"http://127\.0\.0\.1:40000/(lab|tree)\?token=[A-Za-z0-9]+", url), url


GOOD_JOB = {
    "name": "train",
    "argv": ["python", "t.py"],
    "dir": "/home/a",
    "state": "running",
    "started": 1.0,
    "runtime": 2.0,
    "launcher": "tmux",
    "tmux_session": "nbremote-job-train",
    "log": "/home/a/l",
    "pid": 3,
}


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GOOD_JOB) + ["exit_code", "signal", "ended"]), JSON))
def test_job_documents(changes):
    job = only_our_error(lambda doc: jobs.parse_job(doc, "gpubox"), {**GOOD_JOB, **changes})
    if job is not None:
        assert jobs.NAME.fullmatch(job.name) and not _UNSAFE.search(job.dir)
        assert job.tmux_session is None or not job.tmux_session.startswith("-")


@FUZZ
@given(JSON)
def test_agent_errors(error):
    exc = agentlink._agent_error(error, "gpubox")
    for text in [exc.message, exc.hint or "", *exc.details]:
        assert not _UNSAFE.search(text) and len(text) <= servertext.MAX_MESSAGE + 20
    assert len(exc.details) <= agentlink.MAX_DETAILS


@FUZZ
@given(st.lists(st.one_of(TEXT, JSON.map(json.dumps)), max_size=5))
def test_the_agent_answers_every_request_line_with_json(lines):
    """The server side of the protocol: any request line gets one well-formed answer."""
    out = io.StringIO()
    protocol.serve([line.replace("\n", " ") + "\n" for line in lines], out, {"ping": lambda channel: {}}.get, "0" * 12)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert answers[0]["nbremote_agent"] == protocol.PROTOCOL_VERSION
    assert len(answers) == 1 + sum(1 for line in lines if line.replace("\n", " ").strip())
    assert all(a.get("ok") in (True, False) for a in answers[1:])
