"""run / jobs / logs / kill / attach: long commands that outlive the laptop.

The agent does the work (nbremote/agent/jobs.py); here the request is checked
before anything connects, and every field of the reply is checked before use.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Callable

from nbremote import jobcache
from nbremote.servertext import is_safe_text, is_server_path
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.remote import Host, place_for
from nbremote.servers import LAUNCHER, validate_text

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
SIGNALS = ("TERM", "INT", "HUP", "KILL", "QUIT", "USR1", "USR2")
STATES = ("running", "exited", "killed", "lost", "pending", "timeout")  # the last two: Slurm jobs
TMUX_SESSION = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_ARGS = 10_000
MAX_COMMAND = 1024 * 1024
MAX_JOBS = 100_000
RECONNECT_DELAYS = (1, 2, 4, 8)  # then every 8 s until Ctrl-C


def _command(*words: str | None) -> str:
    return "`nbremote " + " ".join(w for w in words if w) + "`"


def validate_name(name: str) -> str:
    if not NAME.fullmatch(name) or name.endswith(".end"):
        raise NbremoteError(
            f"job name {name!r} is not valid",
            hint="use up to 64 letters, digits, '-', '_' or '.', not starting with '.'",
            exit_code=ExitCode.USAGE,
        )
    return name


@dataclass(frozen=True)
class Job:
    name: str
    argv: tuple[str, ...]
    dir: str
    state: str
    started: float
    runtime: float
    launcher: str
    exit_code: int | None = None
    ended: float | None = None
    signal: str | None = None
    tmux_session: str | None = None
    log: str | None = None
    pid: int | None = None
    gpu_memory_mib: int | None = None
    slurm_job_id: str | None = None
    slurm_reason: str | None = None
    node: str | None = None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "dir": self.dir,
            "state": self.state,
            "started": self.started,
            "runtime": round(self.runtime, 1),
            "launcher": self.launcher,
            "exit_code": self.exit_code,
            "ended": self.ended,
            "signal": self.signal,
            "tmux_session": self.tmux_session,
            "log": self.log,
            "pid": self.pid,
            "gpu_memory_mib": self.gpu_memory_mib,
            "slurm_job_id": self.slurm_job_id,
            "slurm_reason": self.slurm_reason,
            "node": self.node,
        }


def _bad(where: str, what: str) -> NbremoteError:
    return NbremoteError(f"the agent on {where} sent an invalid {what}", exit_code=ExitCode.AGENT_FAILED)


def _optional(doc: dict, key: str, kind: type | tuple, where: str):
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _bad(where, f"job {key}")
    return value


def parse_job(doc: object, where: str) -> Job:
    if not isinstance(doc, dict):
        raise _bad(where, "job")
    name, argv, directory = doc.get("name"), doc.get("argv"), doc.get("dir")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _bad(where, "job name")
    if (
        not isinstance(argv, list)
        or not argv
        or len(argv) > MAX_ARGS
        or not all(isinstance(a, str) for a in argv)
        or sum(len(a) for a in argv) > MAX_COMMAND
    ):
        raise _bad(where, "job command")
    if not is_server_path(directory) or doc.get("state") not in STATES:
        raise _bad(where, "job")
    launcher, session, log = doc.get("launcher"), doc.get("tmux_session"), doc.get("log")
    if not isinstance(launcher, str) or not LAUNCHER.fullmatch(launcher):
        raise _bad(where, "job launcher")
    if session is not None and (not isinstance(session, str) or not TMUX_SESSION.fullmatch(session)):
        raise _bad(where, "job tmux session")
    if log is not None and not is_server_path(log):
        raise _bad(where, "job log path")
    if doc.get("signal") is not None and doc.get("signal") not in SIGNALS:
        raise _bad(where, "job signal")
    for key in ("slurm_job_id", "slurm_reason", "node"):  # shown as they are
        if doc.get(key) is not None and not is_safe_text(doc[key], 200):
            raise _bad(where, f"job {key}")
    number = (int, float)
    started, runtime = doc.get("started"), doc.get("runtime")
    if (
        not isinstance(started, number)
        or not isinstance(runtime, number)
        or isinstance(started, bool)
        or isinstance(runtime, bool)
        or not 0 <= started < 2**40
        or not 0 <= runtime < 2**40
    ):
        raise _bad(where, "job time")
    return Job(
        name=name,
        argv=tuple(argv),
        dir=directory,
        state=doc["state"],
        started=float(started),
        runtime=float(runtime),
        launcher=launcher,
        exit_code=_optional(doc, "exit_code", int, where),
        ended=_optional(doc, "ended", number, where),
        signal=_optional(doc, "signal", str, where),
        tmux_session=_optional(doc, "tmux_session", str, where),
        log=_optional(doc, "log", str, where),
        pid=_optional(doc, "pid", int, where),
        gpu_memory_mib=_optional(doc, "gpu_memory_mib", int, where),
        slurm_job_id=_optional(doc, "slurm_job_id", str, where),
        slurm_reason=_optional(doc, "slurm_reason", str, where),
        node=_optional(doc, "node", str, where),
    )


def run(
    *,
    host: str | None,
    argv: list[str],
    name: str | None,
    directory: str,
    env: str | None,
    timeout: float,
    interactive: bool = False,
    slurm_options: list[str] | None = None,
) -> Job:
    if name is not None:
        validate_name(name)
    validate_text(directory, "directory")
    if env is not None:
        validate_text(env, "environment")
    if any("\0" in arg for arg in argv):
        raise NbremoteError("an argument holds a NUL byte, which no program can receive", exit_code=ExitCode.USAGE)
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    args = {"argv": argv, "name": name, "dir": directory, "env": env}
    if slurm_options is not None:
        args["slurm_options"] = slurm_options  # a batch job instead of tmux
    try:
        reply = place.agent(hello_timeout=timeout + 10).request("run", args, timeout=60)
    except NbremoteError as exc:
        if exc.exit_code == ExitCode.CONFLICT and exc.hint and "--prune" in exc.hint:
            # The agent cannot name the host in its hint; the command it suggests needs it.
            raise NbremoteError(
                f"a job named {name} already exists on {place.label}",
                exit_code=ExitCode.CONFLICT,
                hint="pick another --name, or forget finished jobs with " + _command("jobs", host, "--prune"),
            ) from None
        raise
    job = parse_job(reply.get("job"), place.label)
    jobcache.remember_jobs(host, [job.name], complete=False)
    return job


@dataclass(frozen=True)
class JobList:
    jobs: list[Job]
    pruned: list[str]
    gpu: bool


def list_jobs(*, host: str | None, prune: bool, purge: bool, timeout: float, interactive: bool = False) -> JobList:
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    reply = place.agent(hello_timeout=timeout + 10).request("jobs", {"prune": prune, "purge": purge}, timeout=60)
    jobs = reply.get("jobs")
    pruned = reply.get("pruned")
    if (
        not isinstance(jobs, list)
        or not isinstance(pruned, list)
        or len(jobs) > MAX_JOBS
        or len(pruned) > MAX_JOBS
        or not all(isinstance(p, str) and NAME.fullmatch(p) for p in pruned)
    ):
        raise _bad(place.label, "job list")
    listed = JobList([parse_job(doc, place.label) for doc in jobs], pruned, reply.get("gpu") is True)
    jobcache.remember_jobs(host, [job.name for job in listed.jobs], complete=True)
    return listed


def kill(
    *, host: str | None, name: str, signal_name: str, timeout: float, interactive: bool = False
) -> tuple[Job, bool]:
    validate_name(name)
    if signal_name not in SIGNALS:
        raise NbremoteError(f"signal {signal_name!r} is not one of {', '.join(SIGNALS)}", exit_code=ExitCode.USAGE)
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    try:
        reply = place.agent(hello_timeout=timeout + 10).request(
            "kill", {"name": name, "signal_name": signal_name}, timeout=60
        )
    except NbremoteError as exc:
        if exc.exit_code == ExitCode.NO_SUCH_JOB:
            raise _no_job(host, name) from None
        raise
    return parse_job(reply.get("job"), place.label), reply.get("signalled") is True


def logs(
    *,
    host: str | None,
    name: str,
    tail: int | None,
    follow: bool,
    write: Callable[[bytes], object],
    console: Console,
    timeout: float,
    interactive: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Job:
    """Write the job's output through `write`; with follow, until the job ends.

    A follow that loses its connection after it started reconnects, with
    backoff, and goes on from the byte it had reached: nothing is shown twice.
    """
    validate_name(name)
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    position: dict[str, int | None] = {"offset": None}
    streaming = False
    failures = 0

    def on_event(event: str, data: dict) -> None:
        nonlocal streaming
        if event == "log":
            streaming = True
        elif event == "chunk":
            offset, text = data.get("offset"), data.get("data")
            if not isinstance(offset, int) or not isinstance(text, str):
                raise _bad(place.label, "log chunk")
            try:
                chunk = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise _bad(place.label, "log chunk") from None
            if position["offset"] is not None and offset != position["offset"]:
                raise _bad(place.label, "log offset")
            write(chunk)
            position["offset"] = offset + len(chunk)

    while True:
        args = {"name": name, "follow": follow}
        if position["offset"] is not None:
            args["offset"] = position["offset"]
        elif tail is not None:
            args["tail"] = tail
        try:
            reply = place.agent(hello_timeout=timeout + 10).request(
                "logs", args, on_event=on_event, timeout=None if follow else 300
            )
        except NbremoteError as exc:
            # Errors before the stream began are real (no such job); later ones are the network.
            if exc.exit_code == ExitCode.NO_SUCH_JOB and not streaming:
                raise _no_job(host, name) from None
            if not (follow and streaming):
                raise
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            console.warn(f"lost {place.label} ({exc.message}); reconnecting in {delay} s")
            sleep(delay)
            continue
        if failures:
            console.done(f"reconnected to {place.label}")
        return parse_job(reply.get("job"), place.label)


def find_job(*, host: str | None, name: str, timeout: float, interactive: bool = False) -> Job:
    validate_name(name)
    for job in list_jobs(host=host, prune=False, purge=False, timeout=timeout, interactive=interactive).jobs:
        if job.name == name:
            return job
    raise _no_job(host, name)


def _no_job(host: str | None, name: str) -> NbremoteError:
    """The one "no such job" error of attach, logs and kill, its hint naming the host."""
    return NbremoteError(
        f"no job named {name} on {host or 'this machine'}",
        hint=_command("jobs", host) + " lists the jobs there",
        exit_code=ExitCode.NO_SUCH_JOB,
    )


def attach_argv(*, host: str | None, name: str, timeout: float, interactive: bool = True) -> list[str]:
    """The command that puts this terminal in the job's tmux session."""
    job = find_job(host=host, name=name, timeout=timeout, interactive=interactive)
    if job.tmux_session is None:
        raise NbremoteError(
            f"job {name} runs without tmux (it was started with setsid): there is nothing to attach to",
            hint=_command("logs", host, name, "-f") + " follows its output",
        )
    if job.state != "running":
        raise NbremoteError(
            f"job {name} is no longer running ({job.state})", hint=_command("logs", host, name) + " shows its output"
        )
    command = ["tmux", "attach-session", "-t", "=" + job.tmux_session]
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    if isinstance(place, Host):
        return place.connection.interactive_argv(command)
    return command
