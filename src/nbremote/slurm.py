"""The runner for Jupyter in a Slurm batch job, reached through the login node.

The agent on the login node submits the job and reports its state while it
waits (nbremote/agent/slurm.py); here the replies are checked and become a
session like any other (session.py). Where the laptop may ssh to the node
(nodelogin.py), Jupyter listens on the node's loopback and the forward goes
through that ssh (`-L PORT:127.0.0.1:JUPYTER_PORT`); else through the login
node's master to the node's address (`-L PORT:NODE_ADDR:JUPYTER_PORT`). The
laptop remembers it in its session records, and the keeper rebuilds that path
after an outage and asks here whether the job has ended when Jupyter no longer
answers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from nbremote import nodelogin, profiles, slurmopts
from nbremote.console import Console
from nbremote.durations import duration
from nbremote.errors import ExitCode, NbremoteError
from nbremote.ssh import Connection
from nbremote.remote import Host, Place
from nbremote.runner import SLURM, Served, StartRequest
from nbremote.tables import table
from nbremote.servers import MODES
from nbremote.sessions import SessionRecord

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.runner import Progress

_TOKEN = re.compile(r"^[A-Za-z0-9]{16,128}$")
_JOB_ID = re.compile(r"^\d{1,12}$")
_ADDR = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
LOW_TIME = 600  # seconds left under which ls, status and up warn


def _command(*words: str | None) -> str:
    return "`nbremote " + " ".join(w for w in words if w) + "`"


def options_for(host: str | None, slurm_text: str | None) -> list[str]:
    """The profile's batch options with those of --slurm replacing the ones of the same name."""
    profile = profiles.find(host) if host else None
    defaults = list(profile.slurm) if profile is not None else []
    return slurmopts.merge(defaults, slurmopts.parse(slurm_text) if slurm_text is not None else [])


def node_login_for(host: str | None) -> str:
    """The profile's node_login ("auto" without one): whether the laptop tries ssh to the node."""
    profile = profiles.find(host) if host else None
    return profile.node_login if profile is not None and profile.node_login else "auto"


@dataclass(frozen=True)
class Server:
    dir: str
    mode: str
    job_id: str
    token: str
    node: str
    addr: str  # the node's NodeAddr
    port: int
    loopback: bool = False  # Jupyter listens on the node's loopback: reached by ssh to the node
    host_keys: tuple[str, ...] = ()  # the node's, as the job read them there


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
    listen, keys = doc.get("listen", "node"), doc.get("host_keys", [])
    if listen not in ("loopback", "node") or not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _bad(where, "listener")
    return Server(
        dir=directory,
        mode=mode,
        job_id=job_id,
        token=token,
        node=node,
        addr=addr,
        port=port,
        loopback=listen == "loopback",
        host_keys=tuple(keys),
    )


def parse_question(doc: dict[str, object], where: str) -> tuple[str, str, str, list[str]]:
    """A job's "node" event (it waits to hear whether ssh to its node works): job id, node,
    address, host keys."""
    job_id, node, addr, keys = doc.get("job_id"), doc.get("node"), doc.get("addr"), doc.get("host_keys")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise _bad(where, "Slurm job id")
    if not isinstance(addr, str) or not _ADDR.fullmatch(addr) or not isinstance(node, str) or not node:
        raise _bad(where, "node address")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _bad(where, "host key")
    return job_id, node, addr, keys


def _num(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def clean_job(doc: object) -> dict[str, Any]:
    """A job description from the agent, with every field of the wrong type dropped to None."""
    doc = doc if isinstance(doc, dict) else {}
    gpus = doc.get("gpus")
    if not (isinstance(gpus, dict) and _num(gpus.get("count")) is not None):
        gpus = None
    else:
        gpus = {"count": gpus["count"], "type": gpus.get("type") if isinstance(gpus.get("type"), str) else None}
    out = {
        k: doc.get(k) if isinstance(doc.get(k), str) else None
        for k in ("job_id", "state", "reason", "node", "dir", "mode", "addr", "output")
    }
    out.update({k: _num(doc.get(k)) for k in ("elapsed", "time_limit", "time_left", "exit_code", "port")})
    out["gpus"] = gpus
    return out


def gpu_text(gpus: dict[str, Any] | None) -> str:
    if not gpus:
        return "no GPU"
    return f"{gpus['count']}×{gpus['type']}" if gpus.get("type") else f"{gpus['count']} GPU"


def left_text(job: dict[str, Any]) -> str:
    return "no time limit" if job["time_left"] is None else f"{duration(job['time_left'])} left"


def state_text(job: dict[str, Any]) -> str:
    state = job["state"] or "UNKNOWN"
    if state == "PENDING":
        return f"pending ({job['reason']})" if job["reason"] else "pending"
    if state == "RUNNING":
        return f"running on {job['node']}"
    if state == "TIMEOUT":
        return "ended: time limit reached"
    return state.lower()


def render_ls(servers: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The table of `ls`, and the warnings to print under it."""
    rows = [("DIR", "JOB", "STATE", "GPUS", "ELAPSED", "TIME LEFT", "FORWARD")]
    warnings = []
    for s in servers:
        rows.append(
            (
                s["dir"] or "-",
                s["job_id"] or "-",
                state_text(s),
                gpu_text(s["gpus"]),
                duration(s["elapsed"]),
                "unlimited"
                if s["time_left"] is None and s["state"] in ("RUNNING", "PENDING")
                else duration(s["time_left"]),
                f"localhost:{s['local_port']}" if s["local_port"] else "-",
            )
        )
        if s["state"] == "RUNNING" and s["time_left"] is not None and s["time_left"] < LOW_TIME:
            warnings.append(f"Slurm job {s['job_id']} has only {duration(s['time_left'])} left: save your work")
        if s["state"] == "TIMEOUT":
            warnings.append(f"Slurm job {s['job_id']} reached its time limit; `nbremote up` submits a new one")
    return table(rows), warnings


class SlurmRunner:
    """Jupyter in a batch job: `sbatch` on the login node, the forward through it to the node."""

    name = SLURM
    # Its result shows the job's GPUs and time left, which only Slurm knows: the agent is asked.
    reattach_from_record = False

    def __init__(self, options: list[str] | None = None, node_login: str = "auto"):
        self.options = options or []  # sbatch options; only a new job uses them
        self.node_login = node_login  # nodelogin.NODE_LOGIN: whether to try ssh to the job's node
        self.hop: Connection | None = None  # the laptop's ssh to the node, once it logged in

    def _answer(self, place: Place, request: StartRequest, doc: dict[str, object], console: Console) -> None:
        """The job waits to hear whether the laptop can ssh to its node before it starts Jupyter
        (on loopback if so): try, and tell it. A refusal falls back to the node's address under
        "auto"; under "yes", or when the node shows a key the job did not report (someone else
        may answer there), it is an error and the waiting job is cancelled."""
        job_id, node, addr, keys = parse_question(doc, place.label)
        listen = "node"
        if self.node_login != "no" and isinstance(place, Host):
            began = time.monotonic()
            try:
                self.hop = nodelogin.log_in(place, node=node, addr=addr, keys=keys, job_id=job_id)
                listen = "loopback"
                console.done(f"logged in to {node} through {place.label}", time.monotonic() - began)
            except NbremoteError as exc:
                if self.node_login == "yes" or exc.exit_code == ExitCode.HOST_KEY:
                    place.agent(hello_timeout=request.timeout + 10).request(
                        "slurm_down", {"dir": request.dir, "all": False}, timeout=120
                    )
                    exc.details = [*exc.details, f"Slurm job {job_id} is cancelled: it waited for that login"]
                    raise
                console.warn(
                    f"{node} refused ssh from this laptop ({exc.message}): Jupyter listens on its "
                    f'cluster address {addr} instead (node_login = "no" in the profile skips this try)'
                )
        place.agent(hello_timeout=request.timeout + 10).request(
            "slurm_listen", {"dir": request.dir, "job_id": job_id, "listen": listen}, timeout=60
        )

    def start(self, place: Place, request: StartRequest, console: Console, progress: Progress, began: float) -> Served:
        def on_event(name: str, data: dict[str, object]) -> None:
            job = clean_job(data)
            if name == "submitted":
                console.done(f"submitted Slurm job {job['job_id']} on {place.label}", time.monotonic() - began)
            elif name == "ended":
                console.note(f"the earlier Slurm job {job['job_id']} had {state_text(job)}; submitting a new one")
            elif name == "slurm" and job["state"] == "PENDING":
                console.note(
                    f"Slurm job {job['job_id']} {state_text(job)}: waiting for it to start "
                    f"(Ctrl-C leaves it queued; {_command('down', place.host)} cancels it)"
                )
            elif name == "slurm" and job["state"] == "RUNNING":
                console.done(
                    f"Slurm job {job['job_id']} running on {job['node']} ({gpu_text(job['gpus'])}, "
                    f"{left_text(job)}); starting Jupyter",
                    time.monotonic() - began,
                )
            elif name == "node":
                self._answer(place, request, data, console)

        reply = place.agent(hello_timeout=request.timeout + 10).request(
            "slurm_up",
            {
                "dir": request.dir,
                "mode": request.mode,
                "env": request.env,
                "options": self.options,
                "timeout": request.start_timeout,
                "node_login": self.node_login,
            },
            on_event=on_event,
            timeout=None,  # no limit while the job is queued
            on_contact=progress.contact,
        )
        server = parse_server(reply.get("server"), place.label)
        job = clean_job(reply.get("job"))
        reused = reply.get("reused") is True
        what = "JupyterLab" if server.mode == "lab" else "Jupyter Notebook"
        console.done(
            f"{what} {'already running' if reused else 'ready'} in Slurm job {server.job_id} on "
            f"{server.node} ({gpu_text(job['gpus'])}, {left_text(job)})",
            time.monotonic() - began,
        )
        if isinstance(place, Host) and not place.connection.master_alive():
            place.connect()  # a `down` meanwhile let the master go: a queued job's wait outlived it
        if server.loopback and isinstance(place, Host) and self.hop is None:
            # A job that asked an earlier `up`: its Jupyter is on the node's loopback already.
            keys = list(server.host_keys)
            self.hop = nodelogin.log_in(place, node=server.node, addr=server.addr, keys=keys, job_id=server.job_id)
        low = job["time_left"] is not None and job["time_left"] < LOW_TIME
        return Served(
            dir=server.dir,
            mode=server.mode,
            port=server.port,
            token=server.token,
            pid=0,
            reused=reused,
            addr="127.0.0.1" if server.loopback else server.addr,
            hop=server.addr if server.loopback else None,
            job_id=server.job_id,
            node=server.node,
            where=server.node,
            warnings=(f"Slurm job {server.job_id} has only {duration(job['time_left'])} left",) if low else (),
            fields={
                "scheduler": "slurm",
                "job_id": server.job_id,
                "node": server.node,
                "remote_addr": "127.0.0.1" if server.loopback else server.addr,
                "remote_port": server.port,
                "node_login": server.loopback,
                "dir": server.dir,
                "mode": server.mode,
                "gpus": job["gpus"],
                "time_left": job["time_left"],
                "reused": reused,
            },
        )

    def stop(
        self, place: Place, directory: str, all_dirs: bool, console: Console, timeout: float
    ) -> list[dict[str, object]]:
        with console.progress(f"cancelling the Slurm job on {place.label}"):
            reply = place.agent(hello_timeout=timeout + 10).request(
                "slurm_down", {"dir": directory, "all": all_dirs}, timeout=120
            )
        items = reply.get("stopped")
        return [s for s in items if isinstance(s, dict)] if isinstance(items, list) else []

    def _jobs(self, place: Place, timeout: float) -> list[dict[str, Any]]:
        reply = place.agent(hello_timeout=timeout + 10).request("slurm_ls", {}, timeout=60)
        items = reply.get("servers")
        return [clean_job(doc) for doc in items] if isinstance(items, list) else []

    def listing(
        self, place: Place, records: dict[str, SessionRecord], show_token: bool, timeout: float
    ) -> list[tuple[dict[str, object], SessionRecord | None]]:
        rows: list[tuple[dict[str, object], SessionRecord | None]] = []
        for job in self._jobs(place, timeout):
            record = records.get(job["dir"] or "")
            mine = record if record is not None and record.job_id == job["job_id"] else None
            job["local_port"] = mine.local_port if mine is not None else None
            rows.append((job, mine))
        return rows

    def ended(self, place: Place, record: SessionRecord) -> NbremoteError | None:
        jobs = [j for j in self._jobs(place, 10.0) if j["job_id"] == record.job_id]
        state = jobs[0]["state"] if jobs else None
        if state == "RUNNING":
            return None
        again = f"{_command('up', record.host)} submits a new one"
        if state == "TIMEOUT":
            return NbremoteError(
                f"Slurm job {record.job_id} reached its time limit", hint=again, exit_code=ExitCode.SLURM
            )
        return NbremoteError(
            f"Slurm job {record.job_id} ended ({(state or 'gone').lower()})", hint=again, exit_code=ExitCode.SLURM
        )

    def serving(self, record: SessionRecord) -> str:
        return f"Slurm job {record.job_id} on {record.node}"

    def route(self, place: Place, served: Served) -> str:
        if served.hop is not None:
            return f"{place.label} → {served.node} (ssh) → 127.0.0.1:{served.port}"
        return f"{place.label} → {served.node}:{served.port}"

    def left_running(self, record: SessionRecord, label: str, stop: str) -> str:
        return f"Slurm job {record.job_id} keeps running. `{stop}` cancels it."

    def release(self, place: Host) -> None:
        # Not close(): another `up` may be waiting through the master for its queued job.
        place.connection.stop()
