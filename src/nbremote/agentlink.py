"""Ship the agent to the server, run one request, read its replies.

The agent's modules travel zlib-compressed and base64-encoded as an argument
of the remote command, with the request as the next argument, so nothing is
installed on the server and a changed agent can never be stale there. Nothing
goes on stdin: sshd opens a new session's window only once it has handled the
exec request, so stdin data would cost every call one more round trip. Hence
no secret may travel in a request (command lines show in `ps` on the server):
the agent makes Jupyter's token itself and returns it over the channel. (The
one exception, a request's `ping`, writes a bare newline after the agent's
hello, when the window is long open: its answer times the round trip.)

The remote command is a short POSIX sh script; what it assumes of the server:
/bin/sh, a `python3` (or `python` >= 3.8) on the login PATH. Exit code 97 means
no Python was found, 255 is ssh's own failure.
"""

from __future__ import annotations

import collections
import functools
import json
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from nbremote import logs
from nbremote.addresses import public_ip
from nbremote.errors import ExitCode, NbremoteError
from nbremote.servertext import clean_text

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import IO, Any, Callable

log = logs.get(__name__)

# The client's side of the wire: equal to agent/protocol.py's and agent/jupyter.py's, which
# the agent, stdlib only and shipped alone, cannot import from here (tests/unit/test_agentlink.py).
PROTOCOL_VERSION = 1
HELLO_KEY = "nbremote_agent"
NO_PYTHON_EXIT = 97
# The server is not trusted to be sane: a reply line (a job's log chunk is ~88 KiB) and
# the noise a login shell may print before the hello are bounded, as is any text shown.
MAX_LINE = 4 * 1024 * 1024
MAX_NOISE = 1024 * 1024
MAX_DETAILS = 20
MAX_STDERR = 64 * 1024

# Loads the shipped modules (argv[1]) as package nbremote_agent from memory, then
# answers the request in argv[2]. get_source gives the wrapper and the launcher the
# text they are run from in a Python of their own. L is a finder and loader by its methods alone:
# importing importlib.abc for the base classes would double the agent's start-up.
BOOTSTRAP = """\
import sys,json,zlib,base64,importlib.util
b=json.loads(zlib.decompress(base64.b64decode(sys.argv[1])));S=b['src'];P='nbremote_agent'
class L:
 def find_spec(s,name,path,target=None):
  k=name[len(P)+1:] if name.startswith(P+'.') else ('__init__' if name==P else None)
  if k in S:return importlib.util.spec_from_loader(name,s,is_package=name==P)
 def create_module(s,spec):return None
 def get_source(s,name):return S[name[len(P)+1:] or '__init__']
 def exec_module(s,m):
  k=m.__name__[len(P)+1:] or '__init__';exec(compile(S[k],'<agent:'+k+'>','exec'),m.__dict__)
sys.meta_path.insert(0,L())
import nbremote_agent.main as M;M.main(b['hash'],sys.argv[2])
"""

# -S: the agent is stdlib only, so site-packages and their .pth files (many in a
# big conda base) would only slow every start.
_REMOTE_SCRIPT = (
    "for p in python3 python; do "
    'if command -v "$p" >/dev/null 2>&1; then exec "$p" -S -c "$1" "$2" "$3"; fi; '
    "done; echo 'nbremote: no python3 on the server' >&2; exit %d" % NO_PYTHON_EXIT
)


# A sibling module named in the agent's source: `from .state import ...`, `from . import a, b`,
# or module_source("launcher") (run from its text in a Python of its own).
# Patterns, not compiled ones: only packing (once a process) uses them, and compiling them at
# import would cost every command's start-up.
_SIBLING_IMPORT = r"^[ \t]*from \.(\w*) import ([\w, ]+)"
_SIBLING_SOURCE = r"module_source\(\s*[\"'](\w+)[\"']"


def _needed(sources: dict[str, str], module: str) -> set[str]:
    """The agent's modules that run an op whose handler is in module: main (its imports of the
    other ops' modules, in handler_for, are not followed), protocol, module, and what they import."""
    needed = {"__init__", "main"}
    todo = ["protocol", module]
    while todo:
        name = todo.pop()
        if name in needed or name not in sources:
            continue
        needed.add(name)
        text = sources[name]
        for match in re.finditer(_SIBLING_IMPORT, text, re.MULTILINE):
            todo += [match.group(1)] if match.group(1) else [n.strip() for n in match.group(2).split(",")]
        todo += re.findall(_SIBLING_SOURCE, text)
    return needed


# What the agent's modules carry for their readers only: whole-line comments and docstrings
# (a docstring's lines are kept empty, so the server's tracebacks keep the source's line numbers).
_COMMENT_LINE = r"^[ \t]*#[^\n]*$"
_DOCSTRING = r'^([ \t]*)"""(?:[^"\\]|\\.|"(?!""))*"""[ \t]*$'


def _compact(source: str) -> str:
    """source as the agent runs it: the same code, without what only its readers need
    (tests/unit/test_agentlink.py checks that the code is the same)."""
    source = re.sub(_COMMENT_LINE, "", source, flags=re.MULTILINE)
    return re.sub(_DOCSTRING, lambda m: m.group(1) + '""' + "\n" * m.group(0).count("\n"), source, flags=re.MULTILINE)


def _op_of(request: str) -> str | None:
    try:
        doc = json.loads(request)
    except ValueError:
        return None
    op = doc.get("op") if isinstance(doc, dict) else None
    return op if isinstance(op, str) else None


@functools.lru_cache(maxsize=None)
def bundle(op: str | None = None) -> tuple[str, str]:
    """The agent's modules packed for the command line, and their hash (12 hex digits): those
    that op needs, or all of them (no op, or one the agent does not know), without comments
    and docstrings. On a fresh connection TCP sends about ten segments (14 KB) a round trip at
    first, so every 14 KB more on the command line can cost one more: `up`'s command is 13 KB
    this way, against 38 KB with every module as written."""
    # These imports are paid by the commands that pack the agent only.
    import base64
    import hashlib
    import zlib
    from importlib import resources

    from nbremote.agent.main import OP_MODULES

    folder = resources.files("nbremote.agent")
    sources = {
        entry.name[:-3]: _compact(entry.read_text(encoding="utf-8"))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".py")
    }
    if op in OP_MODULES:
        needed = _needed(sources, OP_MODULES[op])
        sources = {name: text for name, text in sources.items() if name in needed}
    digest = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()[:12]
    packed = zlib.compress(json.dumps({"src": sources, "hash": digest}).encode(), 9)
    return base64.b64encode(packed).decode("ascii"), digest


def remote_command(request: str) -> str:
    """The command for ssh; a login shell, so the PATH is the one the user gets there."""
    return shlex.join(["/bin/sh", "-lc", _REMOTE_SCRIPT, "sh", BOOTSTRAP, bundle(_op_of(request))[0], request])


def local_argv(request: str) -> list[str]:
    return [sys.executable, "-c", BOOTSTRAP, bundle(_op_of(request))[0], request]


@dataclass(frozen=True)
class Hello:
    protocol: int
    hash: str
    python: str
    # The server's public addresses it last recorded, each with the one before it: (address, previous).
    public: tuple[tuple[str, str | None], ...] = ()


_VERSION = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,4}")
_HASH = re.compile(r"[0-9a-f]{12}")


def parse_hello(line: str) -> Hello | None:
    """The agent's first line, or None for the noise a login shell may print first."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or HELLO_KEY not in doc:
        return None
    protocol, digest, python = doc.get(HELLO_KEY), doc.get("hash"), doc.get("python")
    if (
        protocol != PROTOCOL_VERSION
        or not isinstance(digest, str)
        or not _HASH.fullmatch(digest)
        or not isinstance(python, str)
        or not _VERSION.fullmatch(python)
    ):
        raise NbremoteError(
            f"the agent on the server speaks another protocol ({clean_text(line.strip(), 80)})",
            exit_code=ExitCode.AGENT_FAILED,
        )
    return Hello(protocol, digest, python, _public(doc.get("public")))


MAX_PUBLIC = 8


def _public(items: object) -> tuple[tuple[str, str | None], ...]:
    """The hello's public addresses that are public IP addresses; anything else is left out, never an error."""
    found: list[tuple[str, str | None]] = []
    for item in items[:MAX_PUBLIC] if isinstance(items, list) else []:
        address = public_ip(item.get("address")) if isinstance(item, dict) else None
        if address is not None and address not in (a for a, _ in found):
            found.append((address, public_ip(item.get("previous"))))
    return tuple(found)


AGENT_ERROR_EXITS = {
    "no_jupyter": ExitCode.NO_JUPYTER,
    "no_env": ExitCode.NO_JUPYTER,
    "no_keep_output": ExitCode.NO_JUPYTER,
    "no_ipykernel": ExitCode.NO_JUPYTER,
    "kernel_failed": ExitCode.JUPYTER_FAILED,
    "not_listening": ExitCode.ERROR,
    "not_yours": ExitCode.ERROR,
    "bad_dir": ExitCode.REMOTE_DIR,
    "jupyter_exited": ExitCode.JUPYTER_FAILED,
    "jupyter_timeout": ExitCode.JUPYTER_FAILED,
    "launch_failed": ExitCode.JUPYTER_FAILED,
    "no_slurm": ExitCode.SLURM,
    "sbatch_refused": ExitCode.SLURM,
    "slurm_failed": ExitCode.SLURM,
    "slurm_timeout": ExitCode.SLURM,
    "job_launch_failed": ExitCode.ERROR,  # not 11: no Jupyter is involved
    "no_job": ExitCode.NO_SUCH_JOB,
    "job_exists": ExitCode.CONFLICT,
    "env_conflict": ExitCode.CONFLICT,
    "listen_conflict": ExitCode.CONFLICT,
    "keep_output_conflict": ExitCode.CONFLICT,
}


def _agent_error(error: object, where: str) -> NbremoteError:
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return NbremoteError(f"the agent on {where} sent a malformed error", exit_code=ExitCode.AGENT_FAILED)
    details = error.get("details")
    hint = error.get("hint")
    message = clean_text(error["message"]).replace("the server", where)
    code = error.get("code")
    return NbremoteError(
        message,
        hint=clean_text(hint).replace("the server", where) if isinstance(hint, str) else None,
        exit_code=AGENT_ERROR_EXITS.get(code, ExitCode.AGENT_FAILED)
        if isinstance(code, str)
        else ExitCode.AGENT_FAILED,
        details=[clean_text(d, 500) for d in details[-MAX_DETAILS:]] if isinstance(details, list) else [],
    )


def _drain(stream: IO[bytes], kept: collections.deque[bytes]) -> None:
    """Read stderr to its end, keeping only its last MAX_STDERR bytes."""
    size = 0
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        kept.append(chunk)
        size += len(chunk)
        while size - len(kept[0]) >= MAX_STDERR:
            size -= len(kept.popleft())


class _Oversized(bytes):
    """Marks a line cut at MAX_LINE: the rest of it is never read into memory."""


_EVENT = re.compile(r"[a-z_]{1,32}")


def _pump(stream: IO[bytes], sink: queue.Queue[bytes | None]) -> None:
    for line in iter(lambda: stream.readline(MAX_LINE + 1), b""):
        if len(line) > MAX_LINE:
            sink.put(_Oversized(line[:200]))
            break
        sink.put(line)
    sink.put(None)


class AgentCall:
    """One agent process (over ssh or local) answering one request."""

    def __init__(
        self,
        command: Callable[[str], list[str]],
        *,
        where: str,
        on_ssh_failure: Callable[[str], NbremoteError] | None,
        hello_timeout: float | None,
        env: dict[str, str] | None = None,
        on_hello: Callable[[Hello], None] | None = None,
    ):
        self.command = command  # argv that runs the agent on one request line
        self.on_hello = on_hello
        self.where = where
        self.on_ssh_failure = on_ssh_failure
        self.hello_timeout = hello_timeout
        self.env = env
        self.round_trip: float | None = None  # seconds, from a request made with ping=True

    def request(
        self,
        op: str,
        args: dict[str, Any],
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        timeout: float | None = 120.0,
        ping: bool = False,
        on_contact: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """The op's result. With ping, also time one round trip over the same channel
        (into ``round_trip``): a line on the agent's stdin once it says hello, answered
        while the op runs. on_contact() hears the hello first: the login is done and the
        agent runs."""
        doc: dict[str, Any] = {"id": 1, "op": op, "args": args}
        if ping:
            doc["ping"] = True
        line = json.dumps(doc)
        log.info("<agent: %s> via %s", op, self.where)
        process = subprocess.Popen(
            self.command(line),
            stdin=subprocess.PIPE if ping else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        out: queue.Queue[bytes | None] = queue.Queue()
        err: collections.deque[bytes] = collections.deque()
        threading.Thread(target=_pump, args=(process.stdout, out), daemon=True).start()
        err_thread = threading.Thread(target=_drain, args=(process.stderr, err), daemon=True)
        err_thread.start()
        answered = False
        try:
            result = self._read(process, out, err, err_thread, on_event, timeout, on_contact)
            answered = True
            return result
        finally:
            if process.stdin is not None and not process.stdin.closed:
                process.stdin.close()
            if process.poll() is None:
                # The exit status follows the answer by moments. Killed instead, an ssh that
                # is its own ControlMaster would leave its control socket behind.
                try:
                    process.wait(timeout=2 if answered else 0.001)
                except subprocess.TimeoutExpired:
                    process.kill()
            process.wait()

    def _ping(self, process: subprocess.Popen[bytes]) -> float | None:
        """Send the ping line and end stdin; the moment it left, or None if it could not go."""
        try:
            assert process.stdin is not None
            process.stdin.write(b"\n")
            process.stdin.close()
        except OSError:
            return None
        return time.monotonic()

    def _read(
        self,
        process: subprocess.Popen[bytes],
        out: queue.Queue[bytes | None],
        err: collections.deque[bytes],
        err_thread: threading.Thread,
        on_event: Callable[[str, dict[str, Any]], None] | None,
        timeout: float | None,
        on_contact: Callable[[], None] | None,
    ) -> dict[str, Any]:
        started = time.monotonic()
        hello = None
        pinged = None
        noise = 0
        while True:
            limit = self.hello_timeout if hello is None else timeout
            remaining = None if limit is None else limit - (time.monotonic() - started)
            try:
                raw = out.get(timeout=remaining if remaining is None or remaining > 0 else 0.001)
            except queue.Empty:
                raise NbremoteError(
                    f"no answer from {self.where} within {limit:g} s",
                    hint="check the network, or raise --timeout",
                    exit_code=ExitCode.UNREACHABLE if hello is None else ExitCode.AGENT_FAILED,
                ) from None
            if raw is None:
                return self._ended(process, err, err_thread)
            if isinstance(raw, _Oversized):
                raise NbremoteError(
                    f"the agent on {self.where} sent a line longer than {MAX_LINE // 2**20} MiB",
                    exit_code=ExitCode.AGENT_FAILED,
                    details=[clean_text(raw.decode("utf-8", "replace"), 200)],
                )
            text = raw.decode("utf-8", "replace")
            if hello is None:
                hello = parse_hello(text)
                if hello is not None:
                    log.debug("agent %s, python %s", hello.hash, hello.python)
                    if process.stdin is not None:
                        pinged = self._ping(process)
                    if on_contact is not None:
                        on_contact()
                    if self.on_hello is not None:
                        self.on_hello(hello)
                    continue
                noise += len(raw)
                if noise > MAX_NOISE:
                    raise NbremoteError(
                        f"{self.where} printed more than {MAX_NOISE // 2**20} MiB before the agent started",
                        hint="check what the login shell's start-up files print there",
                        exit_code=ExitCode.AGENT_FAILED,
                        details=[clean_text(text.strip(), 200)],
                    )
                continue
            reply = self._parse(text)
            if "event" in reply:
                if reply["event"] == "pong":
                    if pinged is not None and self.round_trip is None:
                        self.round_trip = time.monotonic() - pinged
                elif on_event is not None:
                    on_event(reply["event"], reply["data"])
                continue
            if reply.get("ok") is True:
                result: dict[str, Any] = reply["result"]
                return result
            raise _agent_error(reply.get("error"), self.where)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            reply = json.loads(text)
        except ValueError:
            raise NbremoteError(
                f"the agent on {self.where} sent a line that is not JSON",
                exit_code=ExitCode.AGENT_FAILED,
                details=[clean_text(text.strip(), 200)],
            ) from None
        except RecursionError:  # [[[[… nested beyond what json will parse
            raise NbremoteError(
                f"the agent on {self.where} sent a reply nested too deeply", exit_code=ExitCode.AGENT_FAILED
            ) from None
        if not isinstance(reply, dict):
            valid = False
        elif "event" in reply:
            event = reply["event"]
            valid = (
                isinstance(event, str) and _EVENT.fullmatch(event) is not None and isinstance(reply.get("data"), dict)
            )
        else:
            valid = (reply.get("ok") is True and isinstance(reply.get("result"), dict)) or reply.get("ok") is False
        if not valid:
            raise NbremoteError(
                f"the agent on {self.where} sent a malformed reply",
                exit_code=ExitCode.AGENT_FAILED,
                details=[clean_text(text.strip(), 200)],
            )
        parsed: dict[str, Any] = reply
        return parsed

    def _ended(
        self, process: subprocess.Popen[bytes], err: collections.deque[bytes], err_thread: threading.Thread
    ) -> dict[str, Any]:
        code = process.wait()
        err_thread.join(timeout=2)
        stderr = b"".join(err).decode("utf-8", "replace")
        if code == 255 and self.on_ssh_failure is not None:
            raise self.on_ssh_failure(stderr)
        if code == NO_PYTHON_EXIT:
            raise NbremoteError(
                f"no python3 on {self.where}",
                hint="install it there (`sudo apt install python3`); nbremote needs 3.8 or newer",
                exit_code=ExitCode.NO_PYTHON,
            )
        tail = [clean_text(line, 500) for line in stderr.splitlines()[-200:] if line.strip()][-10:]
        raise NbremoteError(
            f"the agent on {self.where} stopped without answering (exit status {code})",
            hint="run with --verbose for details",
            exit_code=ExitCode.AGENT_FAILED,
            details=tail,
        )
