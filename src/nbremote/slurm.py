"""up / down / ls on a Slurm cluster: Jupyter in a batch job, reached through the login node.

The agent on the login node submits the job and reports its state while it
waits (nbremote/agent/slurm.py); here the replies are checked, the local port
is forwarded through the login node's master to the compute node's Jupyter
(`ssh -O forward -L PORT:NODE_ADDR:JUPYTER_PORT`), and the laptop remembers
the session (state dir, slurm-sessions.json, 0600: it holds the token) so
`down` can take the forward away again.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass

from nbremote import paths, profiles, slurmopts
from nbremote.console import Console
from nbremote.errors import ExitCode, NbremoteError
from nbremote.localnet import choose_local_port, port_free, probe
from nbremote.remote import Host, Place, place_for
from nbremote.session import MODES, URL_PATH, validate_text

_TOKEN = re.compile(r"^[A-Za-z0-9]{16,128}$")
_JOB_ID = re.compile(r"^\d{1,12}$")
_ADDR = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
LOW_TIME = 600  # seconds left under which ls, status and up warn


@dataclass(frozen=True)
class SlurmSession:
    host: str
    dir: str
    remote_dir: str
    local_port: int
    addr: str
    port: int
    token: str
    job_id: str
    mode: str

    @property
    def key(self) -> str:
        return f"{self.host}\0{self.dir}"


def _load_sessions() -> dict[str, SlurmSession]:
    return paths.read_records(paths.state_file("slurm-sessions.json"), SlurmSession)


def _save_sessions(records: dict[str, SlurmSession]) -> None:
    paths.write_private(paths.state_dir() / "slurm-sessions.json", json.dumps({k: asdict(v) for k, v in records.items()}, indent=1))


def _command(*words: str | None) -> str:
    return "`nbremote " + " ".join(w for w in words if w) + "`"


def sessions_for(host: str) -> list[SlurmSession]:
    return [s for s in _load_sessions().values() if s.host == host]


def uses_slurm(host: str | None, slurm_text: str | None) -> bool:
    """Slurm when the command asks for it, the profile names it, or a Slurm session there is remembered."""
    if slurm_text is not None:
        return True
    if not host:
        return False
    profile = profiles.find(host)
    if profile is not None and profile.scheduler == "slurm":
        return True
    return bool(sessions_for(host))


def options_for(host: str | None, slurm_text: str | None) -> list[str]:
    """The profile's batch options with those of --slurm replacing the ones of the same name."""
    profile = profiles.find(host) if host else None
    defaults = list(profile.slurm) if profile is not None else []
    return slurmopts.merge(defaults, slurmopts.parse(slurm_text) if slurm_text is not None else [])


@dataclass(frozen=True)
class Server:
    dir: str
    mode: str
    job_id: str
    token: str
    node: str
    addr: str
    port: int


def _bad(where: str, what: str) -> NbremoteError:
    return NbremoteError(f"the agent on {where} sent an invalid {what}", exit_code=ExitCode.AGENT_FAILED)


def parse_server(doc: object, where: str) -> Server:
    if not isinstance(doc, dict):
        raise _bad(where, "server")
    token, job_id, addr, node = doc.get("token"), doc.get("job_id"), doc.get("addr"), doc.get("node")
    port, directory, mode = doc.get("port"), doc.get("dir"), doc.get("mode")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise _bad(where, "token")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise _bad(where, "Slurm job id")
    if not isinstance(addr, str) or not _ADDR.fullmatch(addr) or not isinstance(node, str) or not node:
        raise _bad(where, "node address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _bad(where, "port")
    if not isinstance(directory, str) or mode not in MODES:
        raise _bad(where, "server")
    return Server(dir=directory, mode=mode, job_id=job_id, token=token, node=node, addr=addr, port=port)


def _num(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def clean_job(doc: object) -> dict:
    """A job description from the agent, with every field of the wrong type dropped to None."""
    doc = doc if isinstance(doc, dict) else {}
    gpus = doc.get("gpus")
    if not (isinstance(gpus, dict) and _num(gpus.get("count")) is not None):
        gpus = None
    else:
        gpus = {"count": gpus["count"], "type": gpus.get("type") if isinstance(gpus.get("type"), str) else None}
    out = {k: doc.get(k) if isinstance(doc.get(k), str) else None
           for k in ("job_id", "state", "reason", "node", "dir", "mode", "addr", "output")}
    out.update({k: _num(doc.get(k)) for k in ("elapsed", "time_limit", "time_left", "exit_code", "port")})
    out["gpus"] = gpus
    return out


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def gpu_text(gpus: dict | None) -> str:
    if not gpus:
        return "no GPU"
    return f"{gpus['count']}×{gpus['type']}" if gpus.get("type") else f"{gpus['count']} GPU"


def left_text(job: dict) -> str:
    return "no time limit" if job["time_left"] is None else f"{duration(job['time_left'])} left"


def state_text(job: dict) -> str:
    state = job["state"] or "UNKNOWN"
    if state == "PENDING":
        return f"pending ({job['reason']})" if job["reason"] else "pending"
    if state == "RUNNING":
        return f"running on {job['node']}"
    if state == "TIMEOUT":
        return "ended: time limit reached"
    return state.lower()


@dataclass(frozen=True)
class UpResult:
    host: str | None
    url: str
    local_port: int
    server: Server
    job: dict
    reused: bool
    created_master: bool
    seconds: float

    def to_json(self) -> dict:
        return {"host": self.host, "url": self.url, "local_port": self.local_port, "scheduler": "slurm",
                "job_id": self.server.job_id, "node": self.server.node, "remote_addr": self.server.addr,
                "remote_port": self.server.port, "dir": self.server.dir, "mode": self.server.mode,
                "gpus": self.job["gpus"], "time_left": self.job["time_left"], "reused": self.reused,
                "seconds": round(self.seconds, 3)}


def up(*, host: str | None, directory: str, mode: str, env: str | None, port: int | None, options: list[str],
       timeout: float, start_timeout: float, console: Console, interactive: bool = False) -> UpResult:
    started = time.monotonic()
    validate_text(directory, "directory")
    if env is not None:
        validate_text(env, "environment")
    place = place_for(host, timeout=timeout, interactive=interactive, persist=True)
    had_master = isinstance(place, Host) and place.connection.master_alive()
    previous = _load_sessions().get(f"{place.host}\0{directory}")
    if not isinstance(place, Host):
        local_port = 0  # the node's own address and port are the ones to open
    elif port is None and previous is not None and had_master and not port_free(previous.local_port):
        local_port = previous.local_port  # most likely held by this master's own forward: it is put back below
    else:
        local_port = choose_local_port(port, previous.local_port if previous else None)

    def on_event(name: str, data: dict) -> None:
        job = clean_job(data)
        if name == "submitted":
            console.done(f"submitted Slurm job {job['job_id']} on {place.label}", time.monotonic() - started)
        elif name == "ended":
            console.note(f"the earlier Slurm job {job['job_id']} had {state_text(job)}; submitting a new one")
        elif name == "slurm" and job["state"] == "PENDING":
            console.note(f"Slurm job {job['job_id']} {state_text(job)}: waiting for it to start "
                         f"(Ctrl-C leaves it queued; {_command('down', host)} cancels it)")
        elif name == "slurm" and job["state"] == "RUNNING":
            console.done(f"Slurm job {job['job_id']} running on {job['node']} ({gpu_text(job['gpus'])}, "
                         f"{left_text(job)}); starting Jupyter", time.monotonic() - started)

    forwarded = None
    try:
        reply = place.agent(hello_timeout=timeout + 10).request(
            "slurm_up", {"dir": directory, "mode": mode, "env": env, "options": options, "timeout": start_timeout},
            on_event=on_event, timeout=None)
        server = parse_server(reply.get("server"), place.label)
        job = clean_job(reply.get("job"))
        reused = reply.get("reused") is True
        what = "JupyterLab" if server.mode == "lab" else "Jupyter Notebook"
        console.done(f"{what} {'already running' if reused else 'ready'} in Slurm job {server.job_id} on "
                     f"{server.node} ({gpu_text(job['gpus'])}, {left_text(job)})", time.monotonic() - started)
        if isinstance(place, Host):
            if not place.connection.master_alive():
                place.connect()  # a `down` meanwhile let the master go: this wait outlived it
            if previous is not None and previous.local_port == local_port:
                place.connection.cancel(previous.local_port, previous.port, previous.addr)
            place.connection.forward(local_port, server.port, server.addr)
            forwarded = (local_port, server.port, server.addr)
            url = f"http://127.0.0.1:{local_port}{URL_PATH[server.mode]}?token={server.token}"
            if not probe(local_port, server.token, time.monotonic() + timeout):
                raise NbremoteError(f"Jupyter on {server.node} does not answer through localhost:{local_port}",
                                    hint="run with --verbose to see each step", exit_code=ExitCode.ERROR)
            console.done(f"localhost:{local_port} → {place.label} → {server.node}:{server.port}",
                         time.monotonic() - started)
        else:
            local_port = server.port  # on the login node itself: the node's port, no forward
            url = f"http://{server.addr}:{server.port}{URL_PATH[server.mode]}?token={server.token}"
    except BaseException:
        if forwarded is not None:
            place.connection.cancel(*forwarded)
        if isinstance(place, Host) and not had_master:
            place.connection.close()
        raise
    if job["time_left"] is not None and job["time_left"] < LOW_TIME:
        console.warn(f"Slurm job {server.job_id} has only {duration(job['time_left'])} left")
    records = _load_sessions()
    record = SlurmSession(host=place.host, dir=directory, remote_dir=server.dir, local_port=local_port,
                          addr=server.addr, port=server.port, token=server.token, job_id=server.job_id,
                          mode=server.mode)
    records[record.key] = record
    _save_sessions(records)
    return UpResult(host=host, url=url, local_port=local_port, server=server, job=job, reused=reused,
                    created_master=isinstance(place, Host) and not had_master, seconds=time.monotonic() - started)


def _forget(place: Place, dirs: set[str] | None, remote_dirs: set[str]) -> None:
    records = _load_sessions()
    for key, record in list(records.items()):
        if record.host != place.host:
            continue
        if dirs is None or record.dir in dirs or record.remote_dir in remote_dirs:
            if isinstance(place, Host):
                place.connection.cancel(record.local_port, record.port, record.addr)
            del records[key]
    _save_sessions(records)


def down(*, host: str | None, directory: str, all_dirs: bool, timeout: float, console: Console,
         interactive: bool = False) -> list[dict]:
    validate_text(directory, "directory")
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    with console.progress(f"cancelling the Slurm job on {place.label}"):
        reply = place.agent(hello_timeout=timeout + 10).request("slurm_down", {"dir": directory, "all": all_dirs},
                                                                timeout=120)
    stopped = [s for s in reply.get("stopped", []) if isinstance(s, dict)]
    _forget(place, None if all_dirs else {directory}, {s.get("dir") for s in stopped})
    if isinstance(place, Host) and not sessions_for(place.host):
        from nbremote import sessions  # Jupyter sessions outside Slurm may still use the master

        if not sessions.for_host(place.host):
            # Not close(): another `up` may be waiting through it for its queued job.
            place.connection.stop()
    return stopped


def ls(*, host: str | None, timeout: float, interactive: bool = False) -> list[dict]:
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    reply = place.agent(hello_timeout=timeout + 10).request("slurm_ls", {}, timeout=60)
    local = {s.remote_dir: s for s in sessions_for(place.host)}
    out = []
    for doc in reply.get("servers", []):
        job = clean_job(doc)
        record = local.get(job["dir"] or "")
        job["local_port"] = record.local_port if record is not None and record.job_id == job["job_id"] else None
        out.append(job)
    return out


def render_ls(servers: list[dict]) -> tuple[list[str], list[str]]:
    """The table of `ls`, and the warnings to print under it."""
    rows = [("DIR", "JOB", "STATE", "GPUS", "ELAPSED", "TIME LEFT", "FORWARD")]
    warnings = []
    for s in servers:
        rows.append((s["dir"] or "-", s["job_id"] or "-", state_text(s), gpu_text(s["gpus"]),
                     duration(s["elapsed"]), "unlimited" if s["time_left"] is None and s["state"] in
                     ("RUNNING", "PENDING") else duration(s["time_left"]),
                     f"localhost:{s['local_port']}" if s["local_port"] else "-"))
        if s["state"] == "RUNNING" and s["time_left"] is not None and s["time_left"] < LOW_TIME:
            warnings.append(f"Slurm job {s['job_id']} has only {duration(s['time_left'])} left: save your work")
        if s["state"] == "TIMEOUT":
            warnings.append(f"Slurm job {s['job_id']} reached its time limit; `nbremote up` submits a new one")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows], warnings


def hold(result: UpResult, console: Console, *, timeout: float, interactive: bool,
         sleep=time.sleep) -> None:
    """Stay in the foreground until Ctrl-C or until the job ends, keeping an eye on the tunnel."""
    place = place_for(result.host, timeout=timeout, interactive=interactive, persist=True)
    began = time.monotonic()
    failures = 0
    try:
        while True:
            elapsed = int(time.monotonic() - began)
            console.status(f"● serving {result.url.split('?')[0]} · Slurm job {result.server.job_id} on "
                           f"{result.server.node} · {elapsed // 60} min {elapsed % 60:02d} s")
            sleep(1.0)
            if probe(result.local_port, result.server.token, time.monotonic() + 2):
                failures = 0
                continue
            failures += 1
            if failures < 2:
                continue
            mine = [j for j in ls(host=result.host, timeout=timeout, interactive=interactive)
                    if j["job_id"] == result.server.job_id]
            if not mine or mine[0]["state"] != "RUNNING":
                console.end_status()
                job = mine[0] if mine else {"state": "GONE"}
                if job["state"] == "TIMEOUT":
                    raise NbremoteError(f"Slurm job {result.server.job_id} reached its time limit",
                                        hint=f"{_command('up', result.host)} submits a new one",
                                        exit_code=ExitCode.SLURM)
                raise NbremoteError(f"Slurm job {result.server.job_id} ended ({(job['state'] or 'gone').lower()})",
                                    hint=f"{_command('up', result.host)} submits a new one", exit_code=ExitCode.SLURM)
            failures = 0
    except KeyboardInterrupt:
        console.end_status()
        if isinstance(place, Host):
            place.connection.cancel(result.local_port, result.server.port, result.server.addr)
            if result.created_master:
                place.connection.close()
        console.note(f"stopped forwarding; Slurm job {result.server.job_id} keeps running. "
                     f"{_command('down', result.host)} cancels it.")
