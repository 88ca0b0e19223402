"""Guarantee 3, the stream's bounds, without a network: a local process plays the agent.

A hostile agent can send without end; the client must stop at its limits with
a clear error, holding at most one line's worth of it in memory.
"""

from __future__ import annotations

import json
import sys

import pytest

from nbremote import agentlink, servertext
from nbremote.agentlink import AgentCall
from nbremote.errors import ExitCode, NbremoteError

HELLO = json.dumps({"nbremote_agent": 1, "hash": "0123456789ab", "python": "3.11.2"})


def agent(script: str) -> AgentCall:
    """An agent that is this Python script, whatever the request."""
    return AgentCall(
        lambda request: [sys.executable, "-c", script], where="gpubox", on_ssh_failure=None, hello_timeout=30
    )


def failure(script: str) -> NbremoteError:
    with pytest.raises(NbremoteError) as caught:
        agent(script).request("ls", {}, timeout=30)
    assert caught.value.exit_code == ExitCode.AGENT_FAILED
    return caught.value


def test_endless_noise_before_the_hello_stops_at_its_limit():
    exc = failure("import sys\nwhile True: sys.stdout.write('Welcome! ' * 100 + '\\n')")
    assert exc.message == "gpubox printed more than 1 MiB before the agent started"
    assert len(exc.details) == 1 and len(exc.details[0]) <= 200


def test_an_endless_line_stops_at_its_limit():
    exc = failure(f"import sys\nprint({HELLO!r}, flush=True)\nwhile True: sys.stdout.write('x' * 65536)")
    assert exc.message == "the agent on gpubox sent a line longer than 4 MiB"


def test_a_line_just_under_the_limit_is_read():
    pad = agentlink.MAX_LINE - 100
    script = (
        f"import json\nprint({HELLO!r})\nprint(json.dumps({{'id': 1, 'ok': True, 'result': {{'pad': 'p' * {pad}}}}}))"
    )
    assert len(agent(script).request("ls", {}, timeout=30)["pad"]) == pad


def test_a_flood_on_stderr_keeps_only_its_tail():
    script = "import sys\nfor i in range(200000): sys.stderr.write('\\x1b[2Jline %d\\n' % i)\nsys.exit(3)"
    exc = failure(script)
    assert exc.message == "the agent on gpubox stopped without answering (exit status 3)"
    assert exc.details[-1] == "\ufffd[2Jline 199999" and len(exc.details) == 10


def test_deeply_nested_json_is_an_error_not_a_crash():
    exc = failure(f"print({HELLO!r})\nprint('[' * 200000)")
    assert exc.message == "the agent on gpubox sent a reply nested too deeply"


@pytest.mark.parametrize(
    "text, shown",
    [
        ("plain", "plain"),
        ("\x1b]2;title\x07", "\ufffd]2;title\ufffd"),
        ("a\u202eb\u2066c", "a\ufffdb\ufffdc"),
        ("new\nline\r", "new\ufffdline\ufffd"),
        ("\x9b31m", "\ufffd31m"),
        ("é日🙂", "é日🙂"),
    ],
)
def test_server_text_is_cleaned_before_it_is_shown(text, shown):
    assert servertext.clean_text(text) == shown


def test_server_text_is_bounded():
    assert servertext.clean_text("x" * 5000) == "x" * (servertext.MAX_MESSAGE - 1) + "…"
