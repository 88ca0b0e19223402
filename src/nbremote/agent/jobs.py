"""Long jobs: any command, started detached so it outlives the connection.

Layout under the agent's state dir, 0700 directories and 0600 files:

    jobs/NAME.json       what was asked: argv, dir, environment, launcher, pid
    jobs/NAME.end.json   written once by the wrapper when the command ends
    jobs/NAME.log        the command's stdout and stderr

The argv arrives as a JSON list and reaches the command as a list: it is read
from NAME.json by the wrapper, so no shell ever parses it. The wrapper
(wrapper.py, run in a Python of its own, in tmux when there is one, else with
setsid) waits for the command, writes NAME.end.json atomically, and forwards
the signals it gets to the command's process group, which is what `kill` sends.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from . import jobstore, jupyter, slurm, state, stats
from .protocol import AgentError, module_source

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Channel, Doc

SIGNALS = ("TERM", "INT", "HUP", "KILL", "QUIT", "USR1", "USR2")
CHUNK = 64 * 1024
FOLLOW_POLL = 0.2
# An idle follow still writes now and then: the write is how an agent whose
# client went away finds out, instead of polling a log forever.
HEARTBEAT = 5.0


def _wrapper_alive(record: Doc) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int) or not jupyter._pid_alive(pid):
        return False
    try:  # the pid may have been reused by now
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return os.fsencode(jobstore.path(record["name"], ".json")) in handle.read()
    except OSError:
        return True


def _require(name: object) -> Doc:
    record = jobstore.load(jobstore.validate_name(name))
    if record is None:
        # The client adds the hint: only it knows how the host was named.
        raise AgentError("no_job", "no job named %s on the server" % name)
    return record


def view(record: Doc, gpu_memory: int | None = None) -> Doc:
    """What the client sees of a job, with its state worked out now."""
    if record.get("launcher") == "slurm":
        return slurm.job_view(record, gpu_memory)
    end = jobstore.end(record["name"])
    doc = {
        k: record.get(k)
        for k in ("name", "argv", "dir", "env_spec", "started", "launcher", "tmux_session", "log", "pid")
    }
    doc.update(state="running", exit_code=None, ended=None)
    if end is not None:
        killed = record.get("kill_requested") is not None or end["exit_code"] < 0
        doc.update(state="killed" if killed else "exited", exit_code=end["exit_code"], ended=end.get("ended"))
    elif not _wrapper_alive(record):
        # The wrapper itself was killed (or the machine rebooted): the exit status is lost.
        doc["state"] = "lost"
    doc["signal"] = record.get("kill_requested")
    ended = doc["ended"] if isinstance(doc["ended"], (int, float)) else time.time()
    doc["runtime"] = max(0.0, ended - record.get("started", ended))
    doc["gpu_memory_mib"] = gpu_memory
    return doc


def _family(pid: object) -> list[int]:
    return [pid] + jupyter._descendants(pid) if isinstance(pid, int) else []


def gpu_usage(records: list[Doc], apps: list[Doc]) -> dict[str, int]:
    """Job name -> MiB its processes hold on GPUs (the wrapper's descendants)."""
    by_pid: dict[int, int] = {}
    for app in apps:
        by_pid[app["pid"]] = by_pid.get(app["pid"], 0) + (app["memory_mib"] or 0)
    usage: dict[str, int] = {}
    for record in records:
        pids = _family(record.get("pid"))
        usage[record["name"]] = sum(by_pid.get(p, 0) for p in pids)
    return usage


def _environment(env_spec: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # Output goes to a file, where Python would buffer it for minutes: logs -f
    # would show nothing. A job that sets its own value keeps it.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if env_spec is None:
        return env
    prefix: str | None
    if "/" in env_spec or env_spec.startswith((".", "~")):
        prefix = os.path.realpath(os.path.expanduser(env_spec))
        if not os.path.isdir(os.path.join(prefix, "bin")):
            raise AgentError(
                "no_env",
                "no environment at %s on the server" % prefix,
                hint="pass the directory of a venv or conda environment (the one holding bin/)",
            )
    else:
        prefix = jupyter._conda_prefix(env_spec)
        if prefix is None:
            raise AgentError(
                "no_env",
                'no conda environment "%s" on the server' % env_spec,
                hint="`conda env list` on the server shows the names; or pass a venv's path",
            )
    env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV" if os.path.exists(os.path.join(prefix, "pyvenv.cfg")) else "CONDA_PREFIX"] = prefix
    return env


def _launch(record: Doc, use_tmux: bool) -> tuple[int, str | None]:
    path = jobstore.path(record["name"], ".json")
    wrapper = [sys.executable, "-c", module_source("wrapper"), path]
    if use_tmux:
        # tmux shows '.' and ':' as '_' in session names; the record keeps the real one.
        session = "nbremote-job-" + record["name"].replace(".", "_")
        done = subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                session,
                "-c",
                record["dir"],
                "-P",
                "-F",
                "#{pane_pid}",
                "exec " + shlex.join(wrapper),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
        )
        if done.returncode != 0 or not done.stdout.strip().isdigit():
            raise AgentError("job_launch_failed", "tmux could not start the job: %s" % done.stderr.strip())
        return int(done.stdout.strip()), session
    with open(record["log"], "ab") as log:
        process = subprocess.Popen(
            wrapper,
            cwd=record["dir"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    return process.pid, None


def op_run(
    channel: Channel, argv: Any = None, name: Any = None, dir: Any = None, env: Any = None, slurm_options: Any = None
) -> Doc:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise AgentError("bad_request", "argv must be a non-empty list of strings")
    if any("\0" in a for a in argv):
        raise AgentError("bad_request", "an argument holds a NUL byte, which no program can receive")
    directory = jupyter.resolve_directory(dir)
    environment = _environment(env)
    if slurm_options is not None:
        return slurm.op_run(channel, argv, name, directory, environment, env, slurm_options)
    with state.locked():
        name = jobstore.validate_name(name) if name is not None else jobstore.auto_name(argv)
        previous = jobstore.load(name)
        if previous is not None:
            busy = view(previous)["state"] == "running"
            raise AgentError(
                "job_exists",
                "a job named %s %s on the server" % (name, "is running" if busy else "already exists"),
                hint="pick another --name" + ("" if busy else ", or forget finished jobs with `nbremote jobs --prune`"),
            )
        log_path = jobstore.path(name, ".log")
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        use_tmux = shutil.which("tmux") is not None
        record: Doc = {
            "name": name,
            "argv": argv,
            "dir": directory,
            "env_spec": env,
            "env": environment,
            "log": log_path,
            "started": time.time(),
            "launcher": "tmux" if use_tmux else "setsid",
            "tmux_session": None,
            "pid": None,
            "kill_requested": None,
        }
        jobstore.save(record)
        try:
            record["pid"], record["tmux_session"] = _launch(record, use_tmux)
        except BaseException:
            for suffix in (".json", ".log"):
                os.unlink(jobstore.path(name, suffix))
            raise
        jobstore.save(record)
    return {"job": view(record)}


def op_jobs(channel: Channel, prune: Any = False, purge: Any = False) -> Doc:
    records = [r for r in (jobstore.load(n) for n in jobstore.names()) if r is not None]
    report = stats.gpu_report()
    usage = gpu_usage(records, report["apps"]) if report["available"] else {}
    views = [view(r, usage.get(r["name"])) for r in records]
    pruned: list[str] = []
    if prune:
        with state.locked():
            for doc in views:
                if doc["state"] != "running":
                    suffixes = (".json", ".end.json", ".sh") + ((".log",) if purge else ())
                    for suffix in suffixes:
                        try:
                            os.unlink(jobstore.path(doc["name"], suffix))
                        except FileNotFoundError:
                            pass
                    pruned.append(doc["name"])
        views = [v for v in views if v["name"] not in pruned]
    return {"jobs": views, "pruned": pruned, "gpu": report["available"]}


def op_kill(channel: Channel, name: Any = None, signal_name: Any = "TERM", wait: Any = 5.0) -> Doc:
    record = _require(name)
    if signal_name not in SIGNALS:
        raise AgentError("bad_request", "signal %r is not one of %s" % (signal_name, ", ".join(SIGNALS)))
    if record.get("launcher") == "slurm":
        return slurm.kill(record, signal_name, wait)
    if view(record)["state"] != "running":
        return {"job": view(record), "signalled": False}
    with state.locked():
        record["kill_requested"] = signal_name
        jobstore.save(record)
    signum = getattr(signal, "SIG" + signal_name)
    if signum == signal.SIGKILL:
        # The wrapper cannot catch KILL to pass it on: send it to the command's group itself.
        targets = [p for p in jupyter._descendants(record["pid"]) if _parent(p) == record["pid"]]
        for pid in targets:
            try:
                os.killpg(pid, signum)
            except OSError:
                pass
    else:
        try:
            os.kill(record["pid"], signum)
        except OSError:
            pass
    deadline = time.monotonic() + float(wait)
    while time.monotonic() < deadline and view(record)["state"] == "running":
        time.sleep(0.05)
    return {"job": view(record), "signalled": True}


def _parent(pid: int) -> int | None:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _tail_offset(path: str, lines: int) -> int:
    """Where the last `lines` lines of the file begin."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        position, found = size, 0
        while position > 0:
            step = min(CHUNK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step)
            end = len(block)
            if position + end == size and block.endswith(b"\n"):
                end -= 1  # the final newline ends the last line, it does not start one
            index = block.rfind(b"\n", 0, end)
            while index != -1:
                found += 1
                if found == lines:
                    return position + index + 1
                index = block.rfind(b"\n", 0, index)
        return 0


def op_logs(channel: Channel, name: Any = None, offset: Any = None, tail: Any = None, follow: Any = False) -> Doc:
    record = _require(name)
    path: str = record["log"]
    if offset is None and isinstance(tail, int) and tail >= 0:
        offset = _tail_offset(path, tail) if tail else os.path.getsize(path)
    position = offset if isinstance(offset, int) and offset >= 0 else 0
    channel.event("log", offset=position, size=os.path.getsize(path))
    last_write = time.monotonic()
    with open(path, "rb") as handle:
        while True:
            running = view(record)["state"] in ("running", "pending")  # before reading: no last chunk missed
            handle.seek(position)
            data = handle.read(CHUNK)
            if data:
                channel.event("chunk", offset=position, data=base64.b64encode(data).decode("ascii"))
                position += len(data)
                last_write = time.monotonic()
                continue
            if not follow or not running:
                break
            if time.monotonic() - last_write > HEARTBEAT:
                channel.event("waiting", offset=position)
                last_write = time.monotonic()
            time.sleep(FOLLOW_POLL)
    return {"offset": position, "job": view(record)}


def op_status(channel: Channel) -> Doc:
    """Everything `nbremote status` shows of this machine, in one round trip."""
    report = stats.gpu_report()
    records = [r for r in (jobstore.load(n) for n in jobstore.names()) if r is not None]
    usage = gpu_usage(records, report["apps"]) if report["available"] else {}
    owners: dict[int, str] = {}
    for record in records:
        for pid in _family(record.get("pid")):
            owners[pid] = "job %s" % record["name"]
    servers = []
    for server in jupyter.op_ls(channel)["servers"]:
        server = {k: v for k, v in server.items() if k != "token"}  # status is for looking, not for connecting
        servers.append(server)
        for pid in _family(server.get("pid")):
            owners.setdefault(pid, "Jupyter in %s" % server["dir"])
    for app in report["apps"]:
        app["owner"] = owners.get(app["pid"])
    return {
        "machine": stats.machine(),
        "gpu": report,
        "servers": servers,
        "jobs": [view(r, usage.get(r["name"])) for r in records],
        "slurm": slurm.status_servers(),
    }
