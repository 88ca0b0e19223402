"""Wire format between client and agent: one JSON document per line.

The agent first prints a hello line; the client skips anything before it (login
banners, output of shell start-up files). Then, for each request line, the
agent writes zero or more event lines and exactly one final line.

A request with ``"ping": true`` also times the network: while the operation
runs, each line the client writes on stdin is answered with a ``pong`` event,
and the final line waits until stdin ends, so the client's ping (sent when the
hello arrives) always gets its pong. One round trip over the open channel, with
no second ssh session to open.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import threading

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, TextIO

    Doc = dict[str, Any]  # a JSON object
    Handler = Callable[..., Doc]  # an operation: the channel, then its arguments

PROTOCOL_VERSION = 1
HELLO_KEY = "nbremote_agent"


def module_source(name: str) -> str:
    """The source of a sibling module that runs in a Python of its own (wrapper.py, launcher.py).

    Read through the module's loader: shipped, the agent lives only in the bootstrap's memory."""
    qualified = __name__.rpartition(".")[0] + "." + name
    spec = importlib.util.find_spec(qualified)
    get_source = getattr(spec.loader, "get_source", None) if spec is not None else None
    source = get_source(qualified) if get_source is not None else None
    assert isinstance(source, str), name  # every module of the agent is shipped, with its source
    return source


class AgentError(Exception):
    """A failure the client should show to the user as it is."""

    def __init__(self, code: str, message: str, hint: str | None = None, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details or []

    def to_json(self) -> Doc:
        return {"code": self.code, "message": self.message, "hint": self.hint, "details": self.details}


class Channel:
    def __init__(self, out: TextIO, request_id: object) -> None:
        self._out = out
        self._id = request_id
        self._lock = threading.Lock()  # pongs come from another thread: lines must not interleave

    def event(self, name: str, **data: Any) -> None:
        self._write({"id": self._id, "event": name, "data": data})

    def _write(self, doc: Doc) -> None:
        with self._lock:
            self._out.write(json.dumps(doc, separators=(",", ":")) + "\n")
            self._out.flush()

    def finish(self, result: Doc) -> None:
        self._write({"id": self._id, "ok": True, "result": result})

    def fail(self, error: AgentError) -> None:
        self._write({"id": self._id, "ok": False, "error": error.to_json()})


def hello(agent_hash: str) -> Doc:
    return {
        HELLO_KEY: PROTOCOL_VERSION,
        "hash": agent_hash,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "public": public_addresses(),
    }


WAN_RECORD = "wan-ip.json"


def _wan_records() -> list[str]:
    """Where `nbremote server wan-ip`, `expose` (its router's answer) and `init` keep the WAN
    address they found (server/steps.py's state_dir, which the agent cannot import): the
    folder the environment names, root's, and the user's own."""
    home_state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    folders = [
        os.environ.get("NBREMOTE_STATE_DIR", ""),
        "/var/lib/nbremote",
        os.path.join(home_state, "nbremote-server"),
    ]
    return [os.path.join(f, WAN_RECORD) for f in folders if f]


def public_addresses() -> list[Doc]:
    """The server's public addresses: its WAN address as last recorded (the newest record),
    then its global IPv6 addresses. They ride on every hello, so the laptop keeps its
    profile's WAN and IPv6 entries fresh at no extra round trip.
    The laptop checks them (public addresses, nothing else) and trusts them only because
    this channel is the host whose key it pinned."""
    found = []
    for path in _wan_records():
        try:
            with open(path) as handle:
                doc: object = json.loads(handle.read(4096))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("address"), str) and isinstance(doc.get("at"), (int, float)):
            previous = doc.get("previous")
            found.append(
                {
                    "address": doc["address"][:64],
                    "at": doc["at"],
                    "previous": previous[:64] if isinstance(previous, str) else None,
                }
            )
    found.sort(key=lambda d: -d["at"])
    return found[:1] + [{"address": a} for a in global_ipv6()]


def global_ipv6(path: str = "/proc/net/if_inet6") -> list[str]:
    """The box's global IPv6 addresses (2000::/3), which reach it with no port forward: read
    from the kernel's list, as `ip -6 addr show scope global` would say them, with no
    process to start on every hello. None where the file is missing (not Linux, no IPv6)."""
    found: list[str] = []
    try:
        with open(path) as handle:
            lines = handle.read(65536).splitlines()
    except OSError:
        return found
    for line in lines:
        # address (32 hex digits), interface index, prefix length, scope (00: global), flags, name
        fields = line.split()
        try:
            raw, flags = bytes.fromhex(fields[0]), int(fields[4], 16)
        except (IndexError, ValueError):
            continue
        # Not temporary (01: privacy extensions replace those within a day, a profile would keep
        # a dead one), refused (08), deprecated (20) or tentative (40).
        if fields[3] == "00" and len(raw) == 16 and raw[0] >> 5 == 1 and not flags & 0x69:
            address = socket.inet_ntop(socket.AF_INET6, raw)
            if address not in found:
                found.append(address)
    return found[:2]


PING_WAIT = 30.0  # seconds the final line waits for stdin to end; the client ends it at once


def _answer_pings(stdin: TextIO, channel: Channel) -> threading.Thread:
    def answer() -> None:
        for _line in iter(stdin.readline, ""):
            channel.event("pong")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def serve(
    requests: Iterable[str],
    stdout: TextIO,
    handler_for: Callable[[str], Handler | None],
    agent_hash: str,
    stdin: TextIO | None = None,
) -> None:
    """Answer each request line in turn, each op by its handler_for(op). Never raises for a bad request."""
    stdout.write(json.dumps(hello(agent_hash)) + "\n")
    stdout.flush()
    for line in requests:
        if not line.strip():
            continue
        request_id: object = None
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request is not an object")
            request_id = request.get("id")
            channel = Channel(stdout, request_id)
            op = request.get("op")
            handler = handler_for(op) if isinstance(op, str) else None
            if handler is None:
                raise AgentError("bad_request", "unknown operation %r" % (op,))
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise AgentError("bad_request", "arguments must be an object")
            pings = _answer_pings(stdin, channel) if request.get("ping") is True and stdin is not None else None
            result = handler(channel, **args)
            if pings is not None:
                pings.join(PING_WAIT)
            channel.finish(result)
        except AgentError as exc:
            Channel(stdout, request_id).fail(exc)
        except (ValueError, TypeError) as exc:
            Channel(stdout, request_id).fail(AgentError("bad_request", "malformed request: %s" % exc))
        except Exception as exc:  # the client must always get an answer it can show
            Channel(stdout, request_id).fail(
                AgentError("agent_crashed", "the agent failed: %s: %s" % (type(exc).__name__, exc))
            )
