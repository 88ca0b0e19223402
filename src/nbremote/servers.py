"""What the agent says about a Jupyter server, checked before the laptop uses any of it.

The URL, the forward and the screen depend on these fields; a server that sends
something else is refused with the agent's fault (AGENT_FAILED), never the user's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nbremote.errors import ExitCode, NbremoteError
from nbremote.servertext import clean_text, is_server_path

MODES = ("lab", "notebook")  # the Jupyter UIs `up` opens; the agent knows the same two

URL_PATH = {"lab": "/lab", "notebook": "/tree"}
_TOKEN = re.compile(r"^[A-Za-z0-9]{16,128}$")


@dataclass(frozen=True)
class ServerInfo:
    """A server as the agent describes it, checked before anything uses it."""

    dir: str
    mode: str
    port: int | str  # the loopback port, or the path of its Unix socket (up --socket)
    pid: int
    token: str
    launcher: str
    started: float
    kernels: int | None = None
    busy: int | None = None
    last_activity: str | None = None


def validate_text(value: str, what: str) -> str:
    """Paths and names go to the server as data, but control characters never do."""
    if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise NbremoteError(
            f"{what} {value!r} is not valid: it is empty or has control characters", exit_code=ExitCode.USAGE
        )
    return value


def _int(doc: dict[str, object], name: str, low: int, high: int, where: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise NbremoteError(f"the agent on {where} sent an invalid {name}: {value!r}", exit_code=ExitCode.AGENT_FAILED)
    return value


# tmux, setsid today; a launcher name is shown, never run.
LAUNCHER = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)?")
MAX_SERVERS = 1000


_UNSHOWN = object()


def invalid(where: str, what: str, value: object = _UNSHOWN) -> NbremoteError:
    """The agent's answer refused, naming the field (and its value, shortened and made printable)."""
    # Never validate_text here: that would blame the user (USAGE) for the server's answer.
    shown = "" if value is _UNSHOWN else f": {clean_text(repr(value), 80)}"
    return NbremoteError(f"the agent on {where} sent an invalid {what}{shown}", exit_code=ExitCode.AGENT_FAILED)


def parse_server(doc: object, where: str) -> ServerInfo:
    """Every field the laptop uses, checked: the URL, the forward and the screen depend on them."""
    if not isinstance(doc, dict):
        raise NbremoteError(f"the agent on {where} sent no server", exit_code=ExitCode.AGENT_FAILED)
    token, directory, mode = doc.get("token"), doc.get("dir"), doc.get("mode")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):  # match() would allow a final \n
        raise invalid(where, "token")
    if mode not in MODES:
        raise invalid(where, "server mode", mode)
    if not isinstance(directory, str) or not is_server_path(directory):
        raise invalid(where, "directory", directory)
    launcher, started, activity = doc.get("launcher"), doc.get("started"), doc.get("last_activity")
    if not isinstance(launcher, str) or not LAUNCHER.fullmatch(launcher):
        raise invalid(where, "launcher", launcher)
    # What is only shown is dropped when it is not what it should be; it never gets through unchecked.
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not 0 <= started < 2**40:
        started = 0.0
    if not isinstance(activity, str) or not _ISO_TIME.fullmatch(activity):
        activity = None
    optional = {k: doc.get(k) if _counts(doc.get(k)) else None for k in ("kernels", "busy")}
    sock = doc.get("sock")
    if sock is not None and (not is_server_path(sock) or doc.get("port") is not None):
        raise invalid(where, "socket", sock)
    return ServerInfo(
        dir=directory,
        mode=mode,
        port=sock if sock is not None else _int(doc, "port", 1, 65535, where),
        pid=_int(doc, "pid", 1, 2**31, where),
        token=token,
        launcher=launcher,
        started=float(started),
        last_activity=activity,
        **optional,
    )


def _counts(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100_000


def parse_stopped(doc: object, where: str) -> dict[str, object]:
    if not isinstance(doc, dict) or not is_server_path(doc.get("dir")):
        raise invalid(where, "stopped server")
    return {"dir": doc["dir"], "pid": _int(doc, "pid", 1, 2**31, where)}


def url_for(port: int | str, mode: str, token: str, address: str = "127.0.0.1") -> str:
    return f"http://{address}:{port}{URL_PATH[mode]}?token={token}"


def masked(token: str) -> str:
    """Enough of a token to tell two apart, not enough to use one."""
    return token[:4] + "…"
