"""Kernels for an editor on the laptop: an ipykernel started here, detached, for the
laptop's kernel proxy (nbremote.kernels) to forward its five ports to.

The kernel listens on 127.0.0.1 only, on ports chosen here, and signs its messages
with the key the laptop's Jupyter chose; the key reaches it in a 0600 connection
file, never on a command line. It runs in a session of its own, so it outlives the
ssh connection that started it: a network outage does not lose its state.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

from . import state
from .jupyter import _conda_prefix, _log_tail, _pid_alive, _wait_gone, resolve_directory
from .protocol import AgentError

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Channel, Doc

CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
SCHEMES = ("hmac-sha256",)


def resolve_python(env: str | None) -> str:
    """The python3 of ENV (a conda name or a venv/conda path), else the login PATH's."""
    if env is None:
        import shutil

        found = shutil.which("python3")
        if not found:
            raise AgentError("no_env", "no python3 on the login PATH of the server")
        return found
    if "/" in env or env.startswith((".", "~")):
        prefix = os.path.realpath(os.path.expanduser(env))
        if not os.path.isdir(prefix):
            raise AgentError(
                "no_env",
                "no environment at %s on the server" % prefix,
                hint="pass the directory of a venv or conda environment (the one holding bin/)",
            )
    else:
        found = _conda_prefix(env)
        if found is None:
            raise AgentError(
                "no_env",
                'no conda environment "%s" on the server' % env,
                hint="`conda env list` on the server shows the names; or pass a venv's path",
            )
        prefix = found
    for name in ("python3", "python"):
        candidate = os.path.join(prefix, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise AgentError(
        "no_env",
        "no python in the environment at %s on the server" % prefix,
        hint="pass the directory of a venv or conda environment (the one holding bin/)",
    )


def _check_ipykernel(python: str, env: str | None) -> None:
    done = subprocess.run(
        [python, "-c", "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('ipykernel') else 3)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
    )
    if done.returncode != 0:
        where = "the environment %s" % env if env else "the login PATH's python3"
        pip = "%s -m pip install ipykernel" % python
        raise AgentError(
            "no_ipykernel",
            "no ipykernel in %s on the server" % where,
            hint="on the server run `%s` (in a venv or conda environment, not the system Python)" % pip,
        )


def op_kernel_check(channel: Channel, env: Any = None) -> Doc:
    python = resolve_python(env)
    _check_ipykernel(python, env)
    return {"python": python}


def _free_ports(count: int) -> list[int]:
    # All bound at once, so the kernel gets distinct ports; released just before it binds them.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _connection_path(kernel_id: str) -> str:
    return os.path.join(state.private_dir("kernels"), kernel_id + ".json")


def op_kernel_start(
    channel: Channel,
    env: Any = None,
    key: Any = "",
    signature_scheme: Any = "hmac-sha256",
    dir: Any = None,
    timeout: Any = 60,
) -> Doc:
    if signature_scheme not in SCHEMES or not isinstance(key, str) or not key or len(key) > 256:
        raise AgentError("bad_request", "key and signature_scheme (%s) are required" % ", ".join(SCHEMES))
    directory = resolve_directory(dir)
    python = resolve_python(env)
    _check_ipykernel(python, env)
    import secrets

    kernel_id = secrets.token_hex(8)
    ports = dict(zip(CHANNELS, _free_ports(len(CHANNELS))))
    connection = dict(
        ports, ip="127.0.0.1", transport="tcp", key=key, signature_scheme=signature_scheme, kernel_name=""
    )
    path = _connection_path(kernel_id)
    state.write_private(path, json.dumps(connection))
    log_path = os.path.join(state.private_dir("logs"), "kernel-%s.log" % kernel_id)
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        process = subprocess.Popen(
            [python, "-m", "ipykernel_launcher", "-f", path],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + float(timeout)
    while not all(_listening(p) for p in ports.values()):
        if process.poll() is not None:
            _stop(process.pid, path)
            raise AgentError(
                "kernel_failed",
                "the kernel exited during start-up",
                hint="its log on the server is %s" % log_path,
                details=_log_tail(log_path, 0),
            )
        if time.monotonic() > deadline:
            _stop(process.pid, path)
            raise AgentError(
                "kernel_failed",
                "the kernel did not listen within %g s" % float(timeout),
                hint="its log on the server is %s" % log_path,
                details=_log_tail(log_path, 0),
            )
        time.sleep(0.02)
    return {"id": kernel_id, "pid": process.pid, "ports": ports, "python": python}


def _ours(pid: int, path: str) -> bool:
    """The recorded pid is our kernel only while its command line names our connection file."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return os.fsencode(path) in handle.read().split(b"\0")
    except OSError:
        return False


def _stop(pid: int, path: str) -> None:
    if _ours(pid, path):
        for signum, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 2)):
            try:
                os.killpg(pid, signum)  # the kernel leads its session; its children go too
            except OSError:
                break
            if _wait_gone([pid], wait):
                break
    elif _pid_alive(pid):
        return  # another process: neither it nor the file of the kernel it is not
    try:
        os.unlink(path)
    except OSError:
        pass


def _kernel(kernel_id: object, pid: object) -> str:
    if not isinstance(kernel_id, str) or not kernel_id.isalnum() or not isinstance(pid, int):
        raise AgentError("bad_request", "id and pid of a kernel are required")
    return _connection_path(kernel_id)


def op_kernel_signal(channel: Channel, id: Any = None, pid: Any = None, signal_name: Any = "INT") -> Doc:
    path = _kernel(id, pid)
    if signal_name != "INT":
        raise AgentError("bad_request", "only INT is sent to a kernel")
    alive = _pid_alive(pid) and _ours(pid, path)
    if alive:
        os.kill(pid, signal.SIGINT)
    return {"alive": alive}


def op_kernel_stop(channel: Channel, id: Any = None, pid: Any = None) -> Doc:
    path = _kernel(id, pid)
    _stop(pid, path)
    return {"stopped": not _pid_alive(pid)}
