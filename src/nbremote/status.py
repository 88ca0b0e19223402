"""status: every host at once, each in its own thread, so the whole screen costs
about as much as the slowest host, and a dead one costs at most the timeout.

`gather` returns plain results; `render` turns them into lines; the CLI prints.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from nbremote import jobcache
from nbremote import jobs as jobs_core
from nbremote import slurm
from nbremote import profiles, reach, sessions
from nbremote.servertext import clean_text, is_server_path
from nbremote.durations import duration
from nbremote.errors import NbremoteError
from nbremote.remote import Host, ProfileHost, place_for
from nbremote.servers import masked, url_for

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 20


@dataclass
class HostStatus:
    host: str | None
    label: str
    reachable: bool
    seconds: float
    error: str | None = None
    path: str | None = None
    rtt: float | None = None
    kind: str | None = None  # of the path: LAN, WAN, IPv6, VPN, relay
    ways: list = field(default_factory=list)  # each way in of a profile, with when it last answered
    renumbered: list = field(default_factory=list)  # (old, new) addresses the server's report changed
    machine: dict = field(default_factory=dict)
    gpu: dict = field(default_factory=dict)
    servers: list = field(default_factory=list)
    jobs: list = field(default_factory=list)
    slurm: list = field(default_factory=list)  # Jupyter in Slurm jobs, as nbremote.slurm.clean_job gives them

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "label": self.label,
            "reachable": self.reachable,
            "error": self.error,
            "path": self.path,
            "kind": self.kind,
            "addresses": self.ways,
            "renumbered": [{"old": None if old is None else str(old), "new": str(new)} for old, new in self.renumbered],
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 1),
            "seconds": round(self.seconds, 3),
            "machine": self.machine,
            "gpu": self.gpu,
            "servers": self.servers,
            "jobs": [j.to_json() for j in self.jobs],
            "slurm": self.slurm,
        }


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean_machine(doc: object) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    load = doc.get("load")
    memory, disk = doc.get("memory"), doc.get("disk")
    return {
        "load": load if isinstance(load, list) and len(load) == 3 and all(map(_num, load)) else None,
        "cpus": doc.get("cpus") if isinstance(doc.get("cpus"), int) else None,
        "memory": memory
        if isinstance(memory, dict) and _num(memory.get("total")) and _num(memory.get("used"))
        else None,
        "disk": disk
        if isinstance(disk, dict) and _num(disk.get("free")) and is_server_path(disk.get("path"))
        else None,
    }


def _clean_gpu(doc: object) -> dict:
    doc = doc if isinstance(doc, dict) else {}
    gpus = [g for g in doc.get("gpus") or [] if isinstance(g, dict) and isinstance(g.get("index"), int)]
    apps = [a for a in doc.get("apps") or [] if isinstance(a, dict) and isinstance(a.get("pid"), int)]
    for app in apps:
        for key in ("owner", "name", "gpu_uuid"):
            app[key] = clean_text(app[key], 200) if isinstance(app.get(key), str) else None
    for gpu in gpus:
        for key in ("utilization", "memory_used_mib", "memory_total_mib", "temperature_c"):
            if not isinstance(gpu.get(key), int) or isinstance(gpu.get(key), bool):
                gpu[key] = None
        for key in ("name", "uuid", "error"):
            # The server's text reaches the terminal: never a control sequence, never unbounded.
            gpu[key] = clean_text(gpu[key], 200) if isinstance(gpu.get(key), str) else None
    reason = doc.get("reason")
    return {
        "available": doc.get("available") is True and bool(gpus),
        "gpus": gpus,
        "apps": apps,
        "reason": clean_text(reason, 500) if isinstance(reason, str) else None,
    }


def _clean_servers(items: object) -> list:
    servers = []
    for s in items if isinstance(items, list) else []:
        if (
            isinstance(s, dict)
            and is_server_path(s.get("dir"))
            and (isinstance(s.get("port"), int) or is_server_path(s.get("sock")))
        ):
            server = {k: s.get(k) for k in ("dir", "port", "pid", "running", "kernels", "busy", "mode")}
            server["port"] = s["port"] if isinstance(s.get("port"), int) else s["sock"]
            servers.append(server)
    return servers


def _with_urls(servers: list, slurm_jobs: list, host: str, show_token: bool) -> tuple[list, list]:
    """The URL of each server the laptop forwards, on the host or in a Slurm job, its token (from
    the laptop's own record) masked, and the server's extra forwards (`nbremote forward`); a Slurm
    record counts for the job it was made for only."""
    records = sessions.for_host(host)

    def url(record: sessions.SessionRecord | None) -> str | None:
        return (
            None
            if record is None
            else url_for(record.local_port, record.mode, record.token if show_token else masked(record.token))
        )

    on_host = {r.remote_dir: r for r in records if r.runner == "host"}
    for server in servers:
        record = on_host.get(server["dir"])
        server["url"] = url(record)
        server["forwards"] = [
            {"local_port": local, "remote_port": remote} for local, remote in (record.forwards if record else ())
        ]
    in_jobs = {(r.remote_dir, r.job_id): r for r in records if r.runner == "slurm"}
    for job in slurm_jobs:
        job["url"] = url(in_jobs.get((job["dir"], job["job_id"])))
    return servers, slurm_jobs


def query(host: str | None, *, timeout: float, keep_master: bool = False, show_token: bool = False) -> HostStatus:
    """One host's status; failures become an unreachable HostStatus, never an exception."""
    started = time.monotonic()
    label = host or "this machine"
    try:
        # Without keep_master the ssh that runs the agent is its own master and ends with it:
        # no master to fork into the background, none to stop afterwards.
        # A change the server's report makes in the profile is shown by render(), with the host.
        place = place_for(host, timeout=timeout, interactive=False, persist=keep_master, notify=lambda _: None)
        label = place.label
        had_master = isinstance(place, Host) and place.connection.master_alive()
        try:
            # A little beyond ssh's own ConnectTimeout, so a dead host gets ssh's reason, not ours.
            call = place.agent(hello_timeout=timeout + 2)
            # The round trip is timed on the agent's own channel while it works (ping), not
            # with a second ssh session, which would cost two more round trips and a process.
            reply = call.request("status", {}, timeout=timeout + 20, ping=isinstance(place, Host))
            rtt, path = call.round_trip, None
            if isinstance(place, Host):
                path = place.path(rtt)
        finally:
            # A host profile's address race leaves a master (ControlPersist 60 s): not ours to keep.
            if isinstance(place, Host) and not had_master and not keep_master:
                place.connection.close()
        jobs = [jobs_core.parse_job(doc, label) for doc in reply.get("jobs") or []]
        jobcache.remember_jobs(host, [job.name for job in jobs], complete=True)
    except NbremoteError as exc:
        return HostStatus(
            host=host, label=label, reachable=False, seconds=time.monotonic() - started, error=exc.message
        )
    servers, in_jobs = _with_urls(
        _clean_servers(reply.get("servers")),
        [slurm.clean_job(d) for d in reply.get("slurm") or [] if isinstance(d, dict)],
        place.host,
        show_token,
    )
    return HostStatus(
        host=host,
        label=label,
        reachable=True,
        seconds=time.monotonic() - started,
        path=None if path is None else path["address"],
        rtt=rtt,
        kind=None if path is None else path["kind"],
        ways=[] if path is None else path["addresses"],
        renumbered=place.renumbered if isinstance(place, ProfileHost) else [],
        machine=_clean_machine(reply.get("machine")),
        gpu=_clean_gpu(reply.get("gpu")),
        servers=servers,
        jobs=jobs,
        slurm=in_jobs,
    )


def default_hosts() -> list[str | None]:
    """What `status` asks without HOST: every profile and every host with a session, by name;
    this machine too when it has a session, and alone when there is nothing else."""
    recorded = {r.host for r in sessions.load_all().values()}
    named = sorted(set(profiles.load()) | {h for h in recorded if h})
    local: list[str | None] = [None] if "" in recorded or not named else []
    return named + local


def gather(
    hosts: list[str | None], *, timeout: float, keep_masters: bool = False, show_token: bool = False
) -> list[HostStatus]:
    """Query every host in parallel; the whole call is bounded by the timeout, not by the number of hosts."""
    results: dict[int, HostStatus] = {}
    started = time.monotonic()

    def work(i: int, host: str | None) -> None:
        results[i] = query(host, timeout=timeout, keep_master=keep_masters, show_token=show_token)

    # Daemon threads: a host that hangs past the deadline must not hold the command open.
    threads = [threading.Thread(target=work, args=(i, h), daemon=True) for i, h in enumerate(hosts)]
    for thread in threads:
        thread.start()
    deadline = started + 2 * timeout + 10  # connect, then the agent's answer
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [
        results.get(i)
        or HostStatus(
            host=h,
            label=h or "this machine",
            reachable=False,
            seconds=time.monotonic() - started,
            error=f"no answer within {deadline - started:.0f} s",
        )
        for i, h in enumerate(hosts)
    ]


def close_masters(hosts: list[str | None], *, timeout: float) -> None:
    for host in hosts:
        if host:
            try:
                place = place_for(host, timeout=timeout, interactive=False, persist=True)
            except NbremoteError:
                continue
            if isinstance(place, Host):  # a named host always is
                place.connection.close()


class History:
    """The last few samples of each GPU's utilisation and memory, for --watch."""

    def __init__(self, size: int = HISTORY):
        self.size = size
        self.samples: dict[tuple, deque] = {}

    def add(self, statuses: list[HostStatus]) -> None:
        for status in statuses:
            seen = set()
            for gpu in status.gpu.get("gpus", []):
                for kind, value in (("util", gpu["utilization"]), ("mem", _percent(gpu))):
                    key = (status.label, gpu["index"], kind)
                    self.samples.setdefault(key, deque(maxlen=self.size)).append(value)
                    seen.add(key)
            # A GPU that gave no sample this time (host unreachable, GPU gone) gets a gap,
            # so every series stays in step with the refreshes.
            for key, series in self.samples.items():
                if key[0] == status.label and key not in seen:
                    series.append(None)

    def series(self, label: str, index: int, kind: str) -> list:
        return list(self.samples.get((label, index, kind), []))


def _percent(gpu: dict) -> int | None:
    used, total = gpu.get("memory_used_mib"), gpu.get("memory_total_mib")
    return None if used is None or not total else round(100 * used / total)


def sparkline(values: list) -> str:
    """Percentages as block characters; a missing sample is a space."""
    return "".join(" " if v is None else SPARK[min(len(SPARK) - 1, max(0, int(v) * len(SPARK) // 101))] for v in values)


def job_state(job: jobs_core.Job) -> str:
    if job.state == "pending":
        return f"pending in Slurm ({job.slurm_reason})" if job.slurm_reason else "pending in Slurm"
    if job.state == "timeout":
        return f"reached its time limit after {duration(job.runtime)} (Slurm job {job.slurm_job_id})"
    if job.state == "running" and job.slurm_job_id:
        return f"running {duration(job.runtime)} on {job.node} (Slurm job {job.slurm_job_id})"
    if job.state == "running":
        return f"running {duration(job.runtime)}"
    if job.state == "exited":
        return f"exited {job.exit_code} after {duration(job.runtime)}"
    if job.state == "killed":
        how = f"by SIG{job.signal}" if job.signal else f"by signal {-(job.exit_code or 0)}"
        return f"killed {how} after {duration(job.runtime)}"
    return "ended (exit status lost)"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f}"


def render(statuses: list[HostStatus], history: History | None = None) -> list[str]:
    width = max((len(s.label) for s in statuses), default=0)
    lines = []
    for s in statuses:
        head = s.label.ljust(width)
        if not s.reachable:
            lines.append(f"{head}  unreachable: {s.error}")
            continue
        parts = []
        if s.path:
            via = f"via {s.kind} {s.path}" if s.kind else f"via {s.path}"
            parts.append(f"{via} {s.rtt * 1000:.0f} ms" if s.rtt is not None else via)
        m = s.machine
        if m.get("load"):
            parts.append(f"load {m['load'][0]:.2f}/{m.get('cpus') or '?'}")
        if m.get("memory"):
            parts.append(f"mem {_gb(m['memory']['used'])}/{_gb(m['memory']['total'])} GB")
        if m.get("disk"):
            parts.append(f"disk {m['disk']['path']} {_gb(m['disk']['free'])} GB free")
        lines.append(f"{head}  " + "   ".join(parts))
        lines.extend(f"  {reach.renumbered_text(s.label, old, new)}" for old, new in s.renumbered)
        if len(s.ways) > 1:
            lines.append(f"  ways in  {reach.ways_text(s.ways, time.time())}")
        lines.extend(_gpu_lines(s, history))
        for server in s.servers:
            kernels = (
                ""
                if server.get("kernels") is None
                else f"  {server['kernels']} kernels ({server.get('busy') or 0} busy)"
            )
            state = "" if server.get("running") else "  (stopped)"
            url = f"  {server['url']}" if server.get("url") else ""
            lines.append(f"  Jupyter  {server['dir']}  :{server['port']}{kernels}{state}{url}")
            lines.extend(
                f"  forward  localhost:{f['local_port']} → {s.label}:{f['remote_port']}"
                for f in server.get("forwards") or ()
            )
        for job in s.slurm:
            text = f"  Jupyter  {job['dir']}  Slurm job {job['job_id']} {slurm.state_text(job)}"
            if job["state"] == "RUNNING":
                text += (
                    f" · {slurm.gpu_text(job['gpus'])} · {duration(job['elapsed'])} elapsed · {slurm.left_text(job)}"
                )
                if job["time_left"] is not None and job["time_left"] < slurm.LOW_TIME:
                    text += "  ! ending soon"
            if job.get("url"):
                text += f"  {job['url']}"
            lines.append(text)
        if s.jobs:
            lines.append("  jobs     " + "   ·   ".join(f"{j.name}  {job_state(j)}" for j in s.jobs))
    return lines


def _gpu_lines(s: HostStatus, history: History | None) -> list[str]:
    gpu = s.gpu
    if not gpu.get("available"):
        reason = gpu.get("reason") or "none found"
        return [f"  no GPU ({reason})" if reason in ("no nvidia-smi", "no GPU") else f"  no GPU: {reason}"]
    lines = []
    for g in gpu["gpus"]:
        text = f"  GPU{g['index']} {g.get('name') or '?'}"
        if g.get("error"):
            lines.append(f"{text}  error: {g['error']}")
            continue
        util = "-" if g["utilization"] is None else f"{g['utilization']}%"
        memory = (
            "-"
            if g["memory_used_mib"] is None
            else f"{g['memory_used_mib'] / 1024:.1f}/{(g['memory_total_mib'] or 0) / 1024:.1f} GB"
        )
        temp = "" if g["temperature_c"] is None else f"  {g['temperature_c']}°C"
        text += f"  {util:>4}  {memory}{temp}"
        if history is not None:
            text += (
                f"  util {sparkline(history.series(s.label, g['index'], 'util'))}"
                f"  mem {sparkline(history.series(s.label, g['index'], 'mem'))}"
            )
        users = [a for a in gpu["apps"] if g.get("uuid") and a.get("gpu_uuid") == g["uuid"]]
        if users:
            text += "  " + ", ".join(
                f"{a.get('owner') or a.get('name') or 'pid'} (pid {a['pid']}"
                + (f", {a['memory_mib'] / 1024:.1f} GB)" if isinstance(a.get("memory_mib"), int) else ")")
                for a in users
            )
        lines.append(text)
    return lines
