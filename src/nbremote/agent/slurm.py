"""Jupyter and jobs on a Slurm cluster, run from its login node.

Slurm does everything a scheduler does: this module writes a batch script,
submits it with `sbatch --parsable`, and asks `scontrol show job` what became
of it. Jupyter never runs on the login node: the batch script starts it on the
compute node Slurm picked, on a port picked there, with the token in a 0600
file. Once Jupyter answers, the script writes node, address, port and token to
a 0600 ready file; the client then forwards a local port to it. Where the
laptop may ssh to the node (the profile's node_login, launcher.py), Jupyter
listens on the node's loopback and the forward goes through the laptop's own
ssh to the node; else on the address Slurm knows the node by (its NodeAddr,
which is how the login node reaches it), through the login node.

Files, beside the agent's other state (0700 directories, 0600 files; a
cluster's home directory is shared by its login and compute nodes):

    slurm/KEY.json    the job nbremote submitted for a directory
    slurm/KEY.token   Jupyter's token (JUPYTER_TOKEN_FILE, never on a command line)
    slurm/KEY.sh      the batch script
    slurm/KEY.node    the node's host keys, written by the batch script before Jupyter starts
                      when it waits to hear whether the laptop's ssh to the node works
    slurm/KEY.listen  that answer ("loopback" or "node"), written for the laptop (op_slurm_listen)
    slurm/KEY.ready   written by the batch script once Jupyter answers
    slurm/KEY.out     the job's output (Jupyter's log)

Jobs from `nbremote run --slurm` are ordinary job records (jobs/NAME.json)
with launcher "slurm": their output file is the job's log, and the end record
is written here once Slurm says the job ended.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from . import jobstore, jupyter, state
from .protocol import AgentError, module_source

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Channel, Doc

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
ACTIVE = (
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESV_DEL_HOLD",
)
POLL_FILE = 0.05  # the ready file is local (or NFS) and cheap to look at
POLL_SLURM = 1.0  # scontrol asks slurmctld: about once a second is polite on a busy cluster
STOP_WAIT = 60.0
NODE_LOGIN = ("auto", "yes", "no")
LISTEN = ("loopback", "node")


def render_jupyter_script(
    python: str,
    jupyter_program: str,
    directory: str,
    token_file: str,
    ready_file: str,
    node_login: str = "no",
    allow_root: bool = False,
) -> str:
    """The batch script of a Jupyter job: a pure function of its inputs.

    Batch options go on sbatch's command line, not in #SBATCH lines, where a
    value with a space would need quoting Slurm does not offer.
    """
    argv = [python, "-c", module_source("launcher"), jupyter_program, directory, token_file, ready_file, node_login]
    if allow_root:
        argv.append("--allow-root")
    return (
        "#!/bin/sh\n"
        "# Written by nbremote: Jupyter on the compute node, reached through the login node.\n"
        "exec " + shlex.join(argv) + "\n"
    )


def render_command_script(argv: list[str]) -> str:
    """The batch script of `nbremote run --slurm`: the command, each argument quoted."""
    return "#!/bin/sh\n# Written by nbremote for `nbremote run --slurm`.\nexec " + shlex.join(argv) + "\n"


# --- asking Slurm -------------------------------------------------------------


def require_slurm() -> None:
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise AgentError(
            "no_slurm",
            "no Slurm commands on the server (%s not on the login PATH)" % ", ".join(missing),
            hint="is this the cluster's login node? Slurm's client tools (sbatch, squeue, scontrol, "
            "scancel) must be on the PATH of a login shell there",
        )


def _slurm(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise AgentError(
            "slurm_failed",
            "%s did not answer within %d s" % (argv[0], timeout),
            hint="Slurm's controller may be busy or down; try again shortly",
        ) from None


def parse_show(text: str) -> dict[str, str]:
    """`scontrol show -o` output as a dict; a value with spaces keeps them."""
    fields: dict[str, str] = {}
    key = None
    for word in text.strip().split(" "):
        name, sep, value = word.partition("=")
        if sep and re.match(r"^[A-Za-z][A-Za-z0-9_/:]*$", name):
            key = name
            fields[key] = value
        elif key is not None:
            fields[key] += " " + word
    return fields


def job_info(job_id: str) -> dict[str, str] | None:
    """What Slurm says of a job, or None once it has forgotten it (MinJobAge)."""
    done = _slurm(["scontrol", "-d", "show", "job", "-o", str(job_id)])  # -d: JOB_GRES, the GPUs it got
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return None
        raise AgentError("slurm_failed", "scontrol show job %s failed: %s" % (job_id, done.stderr.strip()))
    return parse_show(done.stdout.splitlines()[0]) if done.stdout.strip() else None


def job_state(info: dict[str, str] | None) -> str:
    """JobState without the flags Slurm may append (`CANCELLED by 1000`)."""
    return (info.get("JobState") or "UNKNOWN").split()[0] if info else "GONE"


def seconds(text: str | None) -> int | None:
    """Slurm's [D-]HH:MM:SS, MM:SS or minutes as seconds; None for UNLIMITED and the like."""
    if not text or not re.match(r"^(\d+-)?[\d:]+$", text):
        return None
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        parts = [0, parts[0], 0]  # bare minutes
    while len(parts) < 3:
        parts.insert(0, 0)
    return days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def gpus(info: dict[str, str]) -> Doc | None:
    """GPUs a job got (JOB_GRES, once running) or asked for: count and type (or None), or None."""
    for key in ("JOB_GRES", "TresPerNode", "TresPerJob", "TresPerTask"):
        match = re.search(r"gpu(?::([A-Za-z0-9_.-]+))?[:=](\d+)", info.get(key) or "")
        if match:
            return {"count": int(match.group(2)), "type": match.group(1)}
    return None


def describe(job_id: str, info: dict[str, str] | None) -> Doc:
    """A job as the client shows it: state, reason, node, GPUs, elapsed, time left."""
    doc: Doc = {
        "job_id": str(job_id),
        "state": job_state(info),
        "reason": None,
        "node": None,
        "gpus": None,
        "elapsed": None,
        "time_limit": None,
        "time_left": None,
        "exit_code": None,
    }
    if not info:
        return doc
    reason = info.get("Reason")
    doc["reason"] = None if reason in (None, "None", "(null)") else reason
    node = info.get("BatchHost") or info.get("NodeList")
    doc["node"] = None if node in (None, "", "(null)") else node
    doc["gpus"] = gpus(info)
    doc["elapsed"] = seconds(info.get("RunTime"))
    doc["time_limit"] = seconds(info.get("TimeLimit"))
    if doc["time_limit"] is not None and doc["elapsed"] is not None and doc["state"] in ACTIVE:
        doc["time_left"] = max(0, doc["time_limit"] - doc["elapsed"])
    code = info.get("ExitCode", "")
    if re.match(r"^\d+:\d+$", code):
        status, signum = (int(x) for x in code.split(":"))
        doc["exit_code"] = -signum if signum else status
    return doc


def submit(script_path: str, options: list[str], names: list[str], env: dict[str, str] | None = None) -> str:
    """sbatch --parsable; the job id, or Slurm's own refusal as the error."""
    argv = ["sbatch", "--parsable"] + names + list(options) + [script_path]
    done = _slurm(argv, env=env)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else "exit status %d" % done.returncode
        message = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "", message)
        raise AgentError(
            "sbatch_refused",
            "Slurm refused the job: %s" % message,
            hint="change the request with --slurm (e.g. fewer GPUs, another --partition); "
            "`sinfo` on the server shows what the cluster has",
            details=lines[:-1][-10:],
        )
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise AgentError("slurm_failed", "sbatch answered %r instead of a job id" % done.stdout.strip()[:80])
    return job_id


def cancel(job_id: str, wait: float = STOP_WAIT) -> str:
    """scancel, then wait until Slurm reports the job ended; its last state."""
    _slurm(["scancel", str(job_id)])
    deadline = time.monotonic() + wait
    while True:
        info = job_info(job_id)
        if job_state(info) not in ACTIVE:
            return job_state(info)
        if time.monotonic() > deadline:
            raise AgentError(
                "slurm_failed",
                "Slurm job %s did not end within %d s of scancel" % (job_id, wait),
                hint="`squeue -j %s` on the server shows it" % job_id,
            )
        time.sleep(0.2)


# --- Jupyter in a job -----------------------------------------------------------


def _paths(key: str) -> dict[str, str]:
    folder = state.private_dir("slurm")
    exts = ("json", "token", "sh", "node", "listen", "ready", "out")
    return {ext: os.path.join(folder, key + "." + ext) for ext in exts}


def _load(key: str) -> Doc | None:
    record = state.read_object(_paths(key)["json"])
    return record if record is not None and isinstance(record.get("job_id"), str) else None


def _forget(key: str) -> None:
    for ext, path in _paths(key).items():
        if ext != "out":  # the output stays for a post-mortem
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _ready(record: Doc) -> Doc | None:
    doc = state.read_object(record["ready"])
    if doc is None or doc.get("job_id") != record["job_id"] or not isinstance(doc.get("port"), int):
        return None
    return doc


def _asking(record: Doc) -> Doc | None:
    """The job's question, while it waits to hear whether the laptop's ssh to its node works."""
    paths = _paths(record["key"])
    doc = state.read_object(paths["node"])
    if doc is None or doc.get("job_id") != record["job_id"] or os.path.exists(paths["listen"]):
        return None
    keys = doc.get("host_keys")
    return {
        "job_id": record["job_id"],
        "node": doc.get("node"),
        "addr": doc.get("addr"),
        "host_keys": keys if isinstance(keys, list) else [],
        "node_login": record.get("node_login", "no"),
    }


def _tail(path: str) -> list[str]:
    return jupyter._log_tail(path, 0)


def _server(record: Doc, ready: Doc) -> Doc:
    return {
        "dir": record["dir"],
        "mode": record["mode"],
        "job_id": record["job_id"],
        "token": record["token"],
        "node": ready["node"],
        "addr": ready["addr"],
        "port": ready["port"],
        "listen": ready.get("listen", "node"),
        "host_keys": ready.get("host_keys", []),
        "submitted": record["submitted"],
    }


def _submit_jupyter(
    key: str, directory: str, mode: str, env_spec: str | None, options: list[str], node_login: str
) -> Doc:
    program = jupyter.resolve_jupyter(mode, env_spec)
    paths = _paths(key)
    for stale in ("node", "listen", "ready", "out"):
        try:
            os.unlink(paths[stale])
        except FileNotFoundError:
            pass
    import secrets  # only a submission needs it; it costs every other request its import time

    token = secrets.token_hex(24)
    state.write_private(paths["token"], token)
    os.close(os.open(paths["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    state.write_private(
        paths["sh"],
        render_jupyter_script(
            sys.executable,
            program,
            directory,
            paths["token"],
            paths["ready"],
            node_login=node_login,
            allow_root=os.geteuid() == 0,
        ),
    )
    env = dict(os.environ)
    bindir = os.path.dirname(program)  # a conda env's kernels need its bin/ first too
    env["PATH"] = os.pathsep.join([bindir] + [d for d in env.get("PATH", "").split(os.pathsep) if d != bindir])
    names = ["--job-name=nbremote-jupyter", "--output=" + paths["out"], "--chdir=" + directory, "--open-mode=append"]
    job_id = submit(paths["sh"], options, names, env=env)
    record: Doc = {
        "key": key,
        "dir": directory,
        "mode": mode,
        "env": env_spec,
        "job_id": job_id,
        "token": token,
        "options": list(options),
        "node_login": node_login,
        "ready": paths["ready"],
        "out": paths["out"],
        "submitted": time.time(),
    }
    state.write_private(paths["json"], json.dumps(record, indent=1, sort_keys=True))
    return record


def _wait_ready(channel: Channel, record: Doc, start_timeout: float) -> Doc:
    """Report the job's state as it changes until Jupyter is ready; no limit while it is queued."""
    job_id = record["job_id"]
    shown: tuple[str, str | None, str | None] | None = None
    running_since: float | None = None
    next_ask = 0.0
    asked = False
    while True:
        ready = _ready(record)
        if ready is not None:
            return ready
        question = None if asked else _asking(record)
        if question is not None:
            # The laptop tries its ssh to the node now and answers with op_slurm_listen.
            asked = True
            channel.event("node", **question)
        if time.monotonic() >= next_ask:
            next_ask = time.monotonic() + POLL_SLURM
            info = job_info(job_id)
            doc = describe(job_id, info)
            if doc["state"] not in ACTIVE:
                if _ready(record) is not None:
                    continue
                _ended_early(record, doc)
            seen = (doc["state"], doc["reason"], doc["node"])
            if seen != shown:
                shown = seen
                channel.event("slurm", **doc)
            if doc["state"] == "RUNNING" and running_since is None:
                running_since = time.monotonic()
            if running_since is not None and time.monotonic() - running_since > start_timeout:
                cancel(job_id)
                raise AgentError(
                    "jupyter_timeout",
                    "Jupyter did not answer within %g s on %s (Slurm job %s, now "
                    "cancelled)" % (start_timeout, doc["node"], job_id),
                    hint="its output on the server is %s" % record["out"],
                    details=_tail(record["out"]),
                )
        time.sleep(POLL_FILE)


def _ended_early(record: Doc, doc: Doc) -> None:
    job_id = record["job_id"]
    if doc["state"] == "TIMEOUT":
        raise AgentError(
            "slurm_timeout",
            "Slurm job %s reached its time limit" % job_id,
            hint='ask for more time with --slurm "--time=HH:MM:SS"',
            details=_tail(record["out"]),
        )
    what = "was cancelled" if doc["state"] == "CANCELLED" else "ended (%s)" % doc["state"].lower()
    raise AgentError(
        "jupyter_exited",
        "Slurm job %s %s before Jupyter was ready" % (job_id, what),
        hint="its output on the server is %s" % record["out"],
        details=_tail(record["out"]),
    )


def op_slurm_up(
    channel: Channel,
    dir: Any = None,
    mode: Any = "lab",
    env: Any = None,
    options: Any = None,
    timeout: Any = 90,
    node_login: Any = "no",
) -> Doc:
    options = [] if options is None else options
    if mode not in jupyter.MODES:
        raise AgentError("bad_request", "mode must be one of %s" % ", ".join(jupyter.MODES))
    if node_login not in NODE_LOGIN:
        raise AgentError("bad_request", "node_login must be one of %s" % ", ".join(NODE_LOGIN))
    if not isinstance(options, list) or not all(isinstance(o, str) and o.startswith("--") for o in options):
        raise AgentError("bad_request", "options must be a list of --name=value strings")
    require_slurm()
    directory = jupyter.resolve_directory(dir)
    key = state.key_for(directory)
    with state.locked():
        record = _load(key)
        reused = False
        if record is not None:
            info = job_info(record["job_id"])
            if job_state(info) in ACTIVE:
                reused = True
            else:
                channel.event("ended", **describe(record["job_id"], info))
                _forget(key)
                record = None
        if record is None:
            record = _submit_jupyter(key, directory, mode, env, options, node_login)
            channel.event("submitted", job_id=record["job_id"])
    ready = _wait_ready(channel, record, float(timeout))
    info = describe(record["job_id"], job_info(record["job_id"]))
    return {"reused": reused, "server": _server(record, ready), "job": info}


def op_slurm_listen(channel: Channel, dir: Any = None, job_id: Any = None, listen: Any = None) -> Doc:
    """The laptop's answer to a job that asked (the "node" event): where Jupyter is to listen."""
    if listen not in LISTEN:
        raise AgentError("bad_request", "listen must be one of %s" % ", ".join(LISTEN))
    key = state.key_for(jupyter.resolve_directory(dir))
    with state.locked():
        record = _load(key)
        if record is None or record["job_id"] != job_id:
            raise AgentError(
                "slurm_failed",
                "Slurm job %s is no longer nbremote's job for %s" % (job_id, dir),
                hint="`nbremote up` again finds or submits the job",
            )
        state.write_private(_paths(key)["listen"], listen)
    return {"listen": listen}


def _records(dir: object, all: object) -> list[Doc]:
    if all:
        folder = state.private_dir("slurm")
        keys = sorted(n[:-5] for n in os.listdir(folder) if n.endswith(".json"))
    else:
        keys = [state.key_for(jupyter.resolve_directory(dir))]
    return [r for r in (_load(k) for k in keys) if r is not None]


def op_slurm_down(channel: Channel, dir: Any = None, all: Any = False) -> Doc:
    require_slurm()
    stopped: list[Doc] = []
    with state.locked():
        for record in _records(dir, all):
            before = job_state(job_info(record["job_id"]))
            after = cancel(record["job_id"]) if before in ACTIVE else before
            _forget(record["key"])
            stopped.append({"dir": record["dir"], "job_id": record["job_id"], "state": after, "was": before})
    return {"stopped": stopped}


def op_slurm_ls(channel: Channel | None) -> Doc:
    require_slurm()
    servers: list[Doc] = []
    for record in _records(None, True):
        doc = describe(record["job_id"], job_info(record["job_id"]))
        ready = _ready(record) if doc["state"] in ACTIVE else None
        doc.update(
            dir=record["dir"],
            mode=record["mode"],
            submitted=record["submitted"],
            port=ready["port"] if ready else None,
            addr=ready["addr"] if ready else None,
            output=record["out"],
        )
        servers.append(doc)
    return {"servers": servers}


def status_servers() -> list[Doc]:
    """The Slurm Jupyter jobs for `nbremote status`, or [] where there is no Slurm."""
    folder = os.path.join(state.state_dir(), "slurm")
    if not os.path.isdir(folder) or not any(n.endswith(".json") for n in os.listdir(folder)):
        return []
    try:
        servers: list[Doc] = op_slurm_ls(None)["servers"]
        return servers
    except AgentError:
        return []


# --- `run --slurm`: jobs of the jobs module, launched by Slurm -------------------------


def op_run(
    channel: Channel,
    argv: list[str],
    name: object,
    directory: str,
    environment: dict[str, str],
    env_spec: str | None,
    options: Any,
) -> Doc:
    require_slurm()
    with state.locked():
        name = jobstore.validate_name(name) if name is not None else jobstore.auto_name(argv)
        if jobstore.load(name) is not None:
            raise AgentError(
                "job_exists",
                "a job named %s %s on the server" % (name, "already exists"),
                hint="pick another --name, or forget finished jobs with `nbremote jobs --prune`",
            )
        log_path = jobstore.path(name, ".log")
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        script = jobstore.path(name, ".sh")
        state.write_private(script, render_command_script(argv))
        try:
            job_id = submit(
                script,
                options,
                ["--job-name=" + name, "--output=" + log_path, "--chdir=" + directory, "--open-mode=append"],
                env=environment,
            )
        except AgentError:
            for suffix in (".log", ".sh"):
                os.unlink(jobstore.path(name, suffix))
            raise
        record: Doc = {
            "name": name,
            "argv": argv,
            "dir": directory,
            "env_spec": env_spec,
            "log": log_path,
            "started": time.time(),
            "launcher": "slurm",
            "slurm_job_id": job_id,
            "slurm_options": options,
            "tmux_session": None,
            "pid": None,
            "kill_requested": None,
        }
        jobstore.save(record)
    return {"job": job_view(record)}


def _end_doc(record: Doc, doc: Doc) -> Doc:
    ended = time.time()
    code = doc["exit_code"] if doc["exit_code"] is not None else -1
    end: Doc = {"exit_code": code, "ended": ended, "slurm_state": doc["state"], "slurm_reason": doc["reason"]}
    state.write_private(jobstore.path(record["name"], ".end.json"), json.dumps(end))
    return end


def job_view(record: Doc, gpu_memory: int | None = None) -> Doc:
    """A Slurm job as `jobs` shows it; once Slurm says it ended, that is written down for good."""
    job_id = record["slurm_job_id"]
    end = jobstore.end(record["name"])
    slurm: Doc | None = None
    if end is None:
        slurm = describe(job_id, job_info(job_id))
        if slurm["state"] not in ACTIVE:
            end = _end_doc(record, slurm)
    doc = {
        k: record.get(k)
        for k in ("name", "argv", "dir", "env_spec", "started", "launcher", "tmux_session", "log", "pid")
    }
    doc.update(
        state="pending" if slurm and slurm["state"] == "PENDING" else "running",
        exit_code=None,
        ended=None,
        signal=record.get("kill_requested"),
        gpu_memory_mib=gpu_memory,
        slurm_job_id=job_id,
        slurm_state=slurm["state"] if slurm else (end or {}).get("slurm_state"),
        slurm_reason=slurm["reason"] if slurm else (end or {}).get("slurm_reason"),
        node=slurm["node"] if slurm else None,
    )
    if end is not None:
        slurm_state = end.get("slurm_state")
        if slurm_state == "TIMEOUT":
            doc["state"] = "timeout"
        elif slurm_state == "CANCELLED" or record.get("kill_requested") is not None:
            doc["state"] = "killed"
        elif slurm_state == "GONE":
            doc["state"] = "lost"
        else:
            doc["state"] = "exited"
        doc.update(exit_code=end["exit_code"], ended=end.get("ended"))
    ended = doc["ended"] if isinstance(doc["ended"], (int, float)) else time.time()
    doc["runtime"] = (
        slurm["elapsed"] if slurm and slurm["elapsed"] is not None else max(0.0, ended - record.get("started", ended))
    )
    return doc


def kill(record: Doc, signal_name: str, wait: Any) -> Doc:
    """`nbremote kill` of a Slurm job: scancel (with the signal asked for, TERM by default)."""
    view = job_view(record)
    if view["state"] not in ("running", "pending"):
        return {"job": view, "signalled": False}
    with state.locked():
        record["kill_requested"] = signal_name
        jobstore.save(record)
    job_id = record["slurm_job_id"]
    if signal_name == "TERM":
        cancel(job_id, wait=max(float(wait), 10.0))
    else:
        _slurm(["scancel", "--signal=" + signal_name, "--full", str(job_id)])
        deadline = time.monotonic() + float(wait)
        while time.monotonic() < deadline and job_view(record)["state"] in ("running", "pending"):
            time.sleep(0.1)
    return {"job": job_view(record), "signalled": True}
