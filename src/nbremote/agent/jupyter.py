"""Find, start, list and stop the Jupyter servers this agent manages.

A server is started detached (in tmux when there is one, else in a new session
with setsid) so it outlives the SSH connection that asked for it. It listens
on 127.0.0.1 only, on a port chosen here, with a token made here. Any user on
the server can read command lines through ``ps``, so the token is never on one:
requests reach the agent on its command line, so the client cannot send it; it
goes back in the `starting` event and the reply, over the ssh channel, and to Jupyter in a 0600 file named
by JUPYTER_TOKEN_FILE. (Not ``--config``: that file would replace the user's own
jupyter_server_config.)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time

from . import state
from .protocol import AgentError

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    import http.client
    from types import ModuleType
    from typing import Any

    from .protocol import Channel, Doc

MODES = ("lab", "notebook")
CONDA_ROOTS = ("miniconda3", "anaconda3", "miniforge3", "mambaforge", ".conda")
LOG_TAIL_LINES = 15


# --- where things are -------------------------------------------------------


def resolve_directory(directory: object) -> str:
    path = os.path.expanduser(directory if isinstance(directory, str) and directory else "~")
    if not os.path.isabs(path):
        path = os.path.join(os.path.expanduser("~"), path)
    path = os.path.realpath(path)
    if not os.path.isdir(path):
        raise AgentError(
            "bad_dir",
            "no directory %s on the server" % path,
            hint="create it first, or pass an existing one with --dir",
        )
    return path


def runtime_dir() -> str:
    """Jupyter's default runtime dir, so `jupyter server list` there sees our servers."""
    if os.environ.get("JUPYTER_RUNTIME_DIR"):
        return os.environ["JUPYTER_RUNTIME_DIR"]
    data = os.environ.get("JUPYTER_DATA_DIR")
    if not data:
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        data = os.path.join(xdg, "jupyter")
    return os.path.join(data, "runtime")


def _conda_bases() -> list[str]:
    bases: list[str] = []
    conda_exe = os.environ.get("CONDA_EXE") or shutil.which("conda")
    if conda_exe:
        bases.append(os.path.dirname(os.path.dirname(os.path.realpath(conda_exe))))
    home = os.path.expanduser("~")
    bases.extend(os.path.join(home, name) for name in CONDA_ROOTS)
    bases.append("/opt/conda")
    return bases


def _conda_prefix(name: str) -> str | None:
    for base in _conda_bases():
        if name == "base" and os.path.isdir(os.path.join(base, "conda-meta")):
            return base
        prefix = os.path.join(base, "envs", name)
        if os.path.isdir(prefix):
            return prefix
    return None


def _install_hint(mode: str, env: str | None, prefix: str | None) -> str:
    package = "jupyterlab" if mode == "lab" else "notebook"
    if env is None:
        # Not `pip install --user`: Debian 12 and Ubuntu 23.04+ refuse it (PEP 668), a venv works everywhere.
        return (
            "on the server make a venv holding it: `python3 -m venv ~/.venvs/jupyter && "
            "~/.venvs/jupyter/bin/pip install %s` (Debian/Ubuntu: `sudo apt-get install python3-venv` "
            "first), then pass `--env '~/.venvs/jupyter'`" % package
        )
    if prefix is not None and ("/" in env or env.startswith((".", "~"))):
        return "on the server run `%s install %s`" % (shlex.quote(os.path.join(prefix, "bin", "pip")), package)
    return "on the server run `conda install -n %s %s` (or `pip install %s` inside it)" % (
        shlex.quote(env),
        package,
        package,
    )


def resolve_jupyter(mode: str, env: str | None) -> str:
    """Return the absolute path of jupyter-lab or jupyter-notebook to run."""
    program = "jupyter-lab" if mode == "lab" else "jupyter-notebook"
    if env is None:
        search = os.environ.get("PATH", "") + os.pathsep + os.path.expanduser("~/.local/bin")
        found = shutil.which(program, path=search)
        if found:
            return found
        what = "JupyterLab" if mode == "lab" else "Jupyter Notebook"
        raise AgentError(
            "no_jupyter", "no %s on the login PATH of the server" % what, hint=_install_hint(mode, None, None)
        )
    prefix: str | None
    if "/" in env or env.startswith((".", "~")):
        prefix = os.path.realpath(os.path.expanduser(env))
        label = "the environment at %s" % prefix
        if not os.path.isdir(prefix):
            raise AgentError(
                "no_env",
                "no environment at %s on the server" % prefix,
                hint="pass the directory of a venv or conda environment (the one holding bin/)",
            )
    else:
        prefix = _conda_prefix(env)
        label = 'the conda environment "%s"' % env
        if prefix is None:
            raise AgentError(
                "no_env",
                'no conda environment "%s" on the server' % env,
                hint="`conda env list` on the server shows the names; or pass a venv's path",
            )
    candidate = os.path.join(prefix, "bin", program)
    if not os.access(candidate, os.X_OK):
        raise AgentError("no_jupyter", "no Jupyter in %s" % label, hint=_install_hint(mode, env, prefix))
    return candidate


# Server-side execution (jupyter-server-nbmodel) writes each output into the notebook's
# shared document (jupyter-server-ydoc), which the server saves: so output printed while
# no browser is attached is in the page when it comes back, and in the .ipynb.
KEEP_OUTPUT_MODULES = ("jupyter_server_nbmodel", "jupyter_server_ydoc")
KEEP_OUTPUT_PACKAGE = "jupyter-server-nbmodel[lab]"


def _interpreter(program: str) -> str:
    """The Python that runs this Jupyter: its script's #! line, as pip wrote it."""
    try:
        with open(program, "rb") as handle:
            first = handle.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    words = first[2:].split()
    if first.startswith("#!") and words and "python" in os.path.basename(words[0]):
        return words[0]
    return os.path.join(os.path.dirname(program), "python3")


def _keep_output_hint(env: str | None, program: str) -> str:
    quoted = shlex.quote(KEEP_OUTPUT_PACKAGE)
    prefix = os.path.dirname(os.path.dirname(program))
    if env is not None and "/" not in env and not env.startswith((".", "~")):
        return "on the server run `conda run -n %s pip install %s`" % (shlex.quote(env), quoted)
    if (
        env is not None
        or os.path.exists(os.path.join(prefix, "pyvenv.cfg"))
        or os.path.isdir(os.path.join(prefix, "conda-meta"))
    ):
        return "on the server run `%s install %s`" % (shlex.quote(os.path.join(prefix, "bin", "pip")), quoted)
    # A system or --user Jupyter: a venv of its own, never pip --user into the system Python.
    return (
        "on the server make a venv with both: `python3 -m venv ~/jupyter-venv && "
        "~/jupyter-venv/bin/pip install jupyterlab notebook %s`, then `up --env ~/jupyter-venv "
        "--keep-output`" % quoted
    )


def check_keep_output(program: str, env: str | None) -> None:
    """Refuse --keep-output, saying how to add it, when this Jupyter's Python lacks the extension."""
    probe = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in %r) else 3)" % (
        KEEP_OUTPUT_MODULES,
    )
    try:
        found = (
            subprocess.run(
                [_interpreter(program), "-c", probe],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        raise AgentError(
            "no_keep_output",
            "the Jupyter at %s cannot keep output while no browser is attached: "
            "it lacks jupyter-server-nbmodel" % program,
            hint=_keep_output_hint(env, program),
        )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- talking to a running server ---------------------------------------------


def _unix_connection(client: ModuleType, path: str, timeout: float) -> http.client.HTTPConnection:
    """An HTTPConnection to a Unix socket; made here because http.client is imported lazily."""

    class UnixConnection(client.HTTPConnection):  # type: ignore[name-defined,misc]
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(path)

    connection: http.client.HTTPConnection = UnixConnection("localhost", timeout=timeout)
    return connection


def api(record: Doc, method: str, path: str, timeout: float = 2.0) -> tuple[int | None, Any]:
    """Call a server's REST API on loopback or its Unix socket; http.client ignores proxy variables."""
    import http.client  # here, not at the top: every agent start would pay for it (ssl, email)

    if record.get("sock"):
        conn = _unix_connection(http.client, record["sock"], timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", record["port"], timeout=timeout)
    try:
        conn.request(method, path, headers={"Authorization": "token " + record["token"]})
        response = conn.getresponse()
        body = response.read()
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        conn.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process reusing the pid
        return False
    try:  # a zombie still answers kill(0)
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _runtime_file(pid: int) -> str:
    return os.path.join(runtime_dir(), "jpserver-%d.json" % pid)


def server_status(record: Doc) -> Doc | None:
    """The live /api/status of a recorded server, or None when it is gone."""
    if not _pid_alive(record["pid"]) or not os.path.exists(_runtime_file(record["pid"])):
        return None
    status, body = api(record, "GET", "/api/status")
    return body if status == 200 and isinstance(body, dict) else None


def kernel_summary(record: Doc) -> dict[str, int] | None:
    status, body = api(record, "GET", "/api/kernels")
    if status != 200 or not isinstance(body, list):
        return None
    busy = sum(1 for k in body if isinstance(k, dict) and k.get("execution_state") == "busy")
    return {"kernels": len(body), "busy": busy}


# --- starting -------------------------------------------------------------


def _tmux_session(key: str) -> str:
    return "nbremote-jupyter-" + key


def _log_tail(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return lines[-LOG_TAIL_LINES:]


def _launch(
    argv: list[str], directory: str, env: dict[str, str], key: str, log_path: str, use_tmux: bool
) -> tuple[int, subprocess.Popen[bytes] | None, str]:
    """Start argv detached; return (pid of Jupyter, Popen or None, launcher name)."""
    if use_tmux:
        session = _tmux_session(key)
        assignments = ["%s=%s" % (k, env[k]) for k in ("PATH", "JUPYTER_RUNTIME_DIR", "JUPYTER_TOKEN_FILE")]
        # exec keeps the pane's pid for Jupyter itself, so pane_pid is the server's pid.
        # stdin stays on the pane's terminal: once no process holds it, tmux closes the pane.
        command = "exec %s >>%s 2>&1" % (shlex.join(["env"] + assignments + argv), shlex.quote(log_path))
        new = ["tmux", "new-session", "-d", "-s", session, "-c", directory, "-P", "-F", "#{pane_pid}", command]
        done = subprocess.run(new, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
        if done.returncode != 0 and "duplicate session" in done.stderr:
            # A session left by a Jupyter that died: killed only when there is one, as a
            # kill-session first would cost every start one more tmux process.
            subprocess.run(
                ["tmux", "kill-session", "-t", "=" + session], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            done = subprocess.run(new, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)
        if done.returncode != 0 or not done.stdout.strip().isdigit():
            raise AgentError("launch_failed", "tmux could not start Jupyter: %s" % done.stderr.strip())
        return int(done.stdout.strip()), None, "tmux"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid, process, "setsid"


def socket_path(key: str) -> str:
    """Where a server started with --socket listens: a 0700 directory, so no other user can connect."""
    return os.path.join(state.private_dir("sockets"), key + ".sock")


def start(
    channel: Channel,
    key: str,
    directory: str,
    mode: str,
    env_spec: str | None,
    timeout: float,
    use_socket: bool = False,
    keep_output: bool = False,
) -> Doc:
    program = resolve_jupyter(mode, env_spec)
    if keep_output:
        check_keep_output(program, env_spec)
    logs = state.private_dir("logs")
    log_path = os.path.join(logs, key + ".log")
    import secrets  # only a start needs it; it costs every other request its import time

    token = secrets.token_hex(24)
    token_path = os.path.join(state.private_dir("tokens"), key)
    state.write_private(token_path, token)
    port: int | None
    sock: str | None
    if use_socket:
        port, sock = None, socket_path(key)
        if os.path.exists(sock):
            os.unlink(sock)  # left by a killed server; Jupyter refuses to bind over it
        listen = ["--ServerApp.sock=" + sock, "--ServerApp.sock_mode=0600"]
    else:
        port, sock = free_port(), None
        listen = ["--ip=127.0.0.1", "--port=%d" % port, "--ServerApp.port_retries=0"]
    argv = [program, "--no-browser"] + listen + ["--ServerApp.root_dir=" + directory]
    if keep_output:
        # The shared document holds the cells nbmodel writes to: by default it is dropped
        # 60 s after the last browser leaves, and output printed after that is lost. Its
        # update store and session file go to our private state, not into the user's folder.
        kept = state.private_dir("keep-output")
        argv += [
            "--YDocExtension.document_cleanup_delay=None",
            "--SQLiteYStore.db_path=" + os.path.join(kept, key + ".ystore.db"),
            "--YDocExtension.session_store_path=" + os.path.join(kept, key + ".sessions.json"),
        ]
    if os.geteuid() == 0:
        # Jupyter refuses root without this; containers and fresh VMs often only have root.
        argv.append("--allow-root")
    env = dict(os.environ)
    bindir = os.path.dirname(program)  # a conda env's kernels need its bin/ first too
    env["PATH"] = os.pathsep.join([bindir] + [d for d in env.get("PATH", "").split(os.pathsep) if d != bindir])
    env["JUPYTER_RUNTIME_DIR"] = runtime_dir()
    env["JUPYTER_TOKEN_FILE"] = token_path
    env.pop("JUPYTER_TOKEN", None)  # it would win over the file
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    offset = os.path.getsize(log_path)
    use_tmux = shutil.which("tmux") is not None
    pid, process, launcher = _launch(argv, directory, env, key, log_path, use_tmux)
    record: Doc = {
        "key": key,
        "dir": directory,
        "mode": mode,
        "env": env_spec,
        "jupyter": program,
        "port": port,
        "sock": sock,
        "pid": pid,
        "token": token,
        "launcher": launcher,
        "tmux_session": _tmux_session(key) if launcher == "tmux" else None,
        "log": log_path,
        "started": time.time(),
        "keep_output": bool(keep_output),
    }
    state.save_record(record)
    # The token rides the ssh channel, as in the final reply: the client polls through its
    # forward with it while Jupyter starts, and that poll's answer proves the URL.
    if sock:
        channel.event("starting", sock=sock, pid=pid, launcher=launcher, token=token)
    else:
        channel.event("starting", port=port, pid=pid, launcher=launcher, token=token)
    import http.client  # noqa: F401  api() needs it at the first answer: paid now, while Jupyter starts

    deadline = time.monotonic() + timeout
    while True:
        exited = process.poll() is not None if process else not _pid_alive(pid)
        if exited:
            state.forget(key)
            raise AgentError(
                "jupyter_exited",
                "Jupyter exited during start-up",
                hint="its log on the server is %s" % log_path,
                details=_log_tail(log_path, offset),
            )
        if server_status(record) is not None:
            _restrict_runtime_files(pid)
            return record
        if time.monotonic() > deadline:
            _stop_pid(pid, record)
            state.forget(key)
            raise AgentError(
                "jupyter_timeout",
                "Jupyter did not answer within %g s" % timeout,
                hint="its log on the server is %s" % log_path,
                details=_log_tail(log_path, offset),
            )
        time.sleep(0.01)


# --- stopping -------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Children first found through /proc; kernels run in sessions of their own."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _is_ours(pid: int, record: Doc) -> bool:
    """After a reboot the recorded pid may belong to an unrelated process: never signal that."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return os.path.exists(_runtime_file(pid))  # no /proc: trust Jupyter's own file
    if record.get("sock"):
        return ("--ServerApp.sock=" + record["sock"]).encode() in argv
    return ("--port=%d" % record["port"]).encode() in argv


def _stop_pid(pid: int, record: Doc) -> None:
    """Ask Jupyter to shut down, then TERM, then KILL it and what it started."""
    if not _is_ours(pid, record):
        _remove_runtime_files(pid)
        return
    family = [pid] + _descendants(pid)
    if _pid_alive(pid):
        api(record, "POST", "/api/shutdown", timeout=3)
        if not _wait_gone([pid], 5):
            _signal_all([pid], signal.SIGTERM)
            if not _wait_gone([pid], 3):
                _signal_all([pid], signal.SIGKILL)
                _wait_gone([pid], 2)
    leftovers = [p for p in family if _pid_alive(p)]
    _signal_all(leftovers, signal.SIGTERM)
    if not _wait_gone(leftovers, 2):
        _signal_all(leftovers, signal.SIGKILL)
    if record.get("tmux_session") and shutil.which("tmux"):
        subprocess.run(
            ["tmux", "kill-session", "-t", "=" + record["tmux_session"]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    _remove_runtime_files(pid)
    if record.get("sock"):
        try:
            os.unlink(record["sock"])
        except OSError:
            pass


def _restrict_runtime_files(pid: int) -> None:
    # Jupyter writes its redirect page, which holds the token, 0644: its runtime dir is
    # 0700, but a copy or a looser dir must not expose it. Not umask: that would make
    # the user's own notebooks 0600 too.
    try:
        os.chmod(os.path.join(runtime_dir(), "jpserver-%d-open.html" % pid), 0o600)
    except OSError:
        pass


def _remove_kept_documents(key: str) -> None:
    for suffix in (".ystore.db", ".sessions.json"):
        try:
            os.unlink(os.path.join(state.state_dir(), "keep-output", key + suffix))
        except OSError:
            pass


def _remove_runtime_files(pid: int) -> None:
    # A killed Jupyter leaves its runtime files; remove them or `jupyter server list` lies.
    for suffix in (".json", "-open.html"):
        try:
            os.unlink(os.path.join(runtime_dir(), "jpserver-%d%s" % (pid, suffix)))
        except OSError:
            pass


# --- operations -------------------------------------------------------------


def _public(record: Doc, status: Doc | None = None) -> Doc:
    view = {k: record[k] for k in ("dir", "mode", "env", "port", "pid", "token", "launcher", "started")}
    view["sock"] = record.get("sock")
    view["tmux_session"] = record.get("tmux_session")
    view["keep_output"] = bool(record.get("keep_output"))
    if status is not None:
        view["last_activity"] = status.get("last_activity")
        view["connections"] = status.get("connections")
        summary = kernel_summary(record)
        if summary:
            view.update(summary)
    return view


def op_up(
    channel: Channel,
    dir: Any = None,
    mode: Any = "lab",
    env: Any = None,
    timeout: Any = 60,
    socket: Any = False,
    keep_output: Any = False,
) -> Doc:
    if mode not in MODES:
        raise AgentError("bad_request", "mode must be one of %s" % ", ".join(MODES))
    directory = resolve_directory(dir)
    key = state.key_for(directory)
    with state.locked():
        record = state.load_record(key)
        replaced = None
        if record is not None:
            status = server_status(record)
            if status is not None:
                if bool(socket) != bool(record.get("sock")) and socket:
                    raise AgentError(
                        "listen_conflict",
                        "the Jupyter running in %s listens on a port, not on a Unix socket" % directory,
                        hint="stop it first with `nbremote down` and the same --dir, then `up --socket` again",
                    )
                if env is not None and record.get("env") != env:
                    raise AgentError(
                        "env_conflict",
                        "a Jupyter from %s is already running in %s"
                        % (record.get("env") or "the login PATH", directory),
                        hint="stop it first with `nbremote down` and the same --dir",
                    )
                if keep_output and not record.get("keep_output"):
                    raise AgentError(
                        "keep_output_conflict",
                        "the Jupyter running in %s was started without --keep-output" % directory,
                        hint="stop it first with `nbremote down` and the same --dir, then `up --keep-output` again",
                    )
                return {"reused": True, "server": _public(record, status)}
            replaced = record["pid"]
            channel.event("stale", pid=replaced)
            _stop_pid(record["pid"], record)
            state.forget(key)
        record = start(
            channel, key, directory, mode, env, float(timeout), use_socket=bool(socket), keep_output=bool(keep_output)
        )
        return {"reused": False, "replaced_pid": replaced, "server": _public(record)}


def _select(dir: object, all: object) -> list[Doc]:
    if all:
        return state.all_records()
    key = state.key_for(resolve_directory(dir))
    record = state.load_record(key)
    return [record] if record else []


def op_down(channel: Channel, dir: Any = None, all: Any = False) -> Doc:
    stopped: list[Doc] = []
    with state.locked():
        for record in _select(dir, all):
            _stop_pid(record["pid"], record)
            _remove_kept_documents(record["key"])
            state.forget(record["key"])
            stopped.append({"dir": record["dir"], "pid": record["pid"]})
    return {"stopped": stopped}


def op_ls(channel: Channel) -> Doc:
    servers: list[Doc] = []
    for record in state.all_records():
        status = server_status(record)
        view = _public(record, status)
        view["running"] = status is not None
        servers.append(view)
    return {"servers": servers}
