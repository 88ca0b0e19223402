"""The runner for Jupyter on the host itself: the agent starts it under tmux (else setsid)
and it listens on the host's loopback (or a Unix socket in a 0700 dir, `up --socket`)."""

from __future__ import annotations

import time

from nbremote.servertext import is_safe_text, is_server_path
from nbremote.console import Console
from nbremote.errors import NbremoteError
from nbremote.remote import Host, Place, ThisMachine
from nbremote.runner import Served, StartRequest
from nbremote.servers import (
    MAX_SERVERS,
    ServerInfo,
    invalid,
    masked,
    parse_server,
    parse_stopped,
    url_for,
)
from nbremote.sessions import SessionRecord

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.runner import Progress


def served_from(server: ServerInfo, *, reused: bool, replaced: int | None, where: str) -> Served:
    return Served(
        dir=server.dir,
        mode=server.mode,
        port=server.port,
        token=server.token,
        pid=server.pid,
        reused=reused,
        where=where,
        fields={
            "remote_port": server.port if isinstance(server.port, int) else None,
            "remote_socket": server.port if isinstance(server.port, str) else None,
            "pid": server.pid,
            "dir": server.dir,
            "mode": server.mode,
            "launcher": server.launcher,
            "reused": reused,
            "replaced_pid": replaced,
        },
    )


class HostRunner:
    name = "host"
    reattach_from_record = True

    def start(self, place: Place, request: StartRequest, console: Console, progress: Progress, began: float) -> Served:
        def on_event(name: str, data: dict[str, object]) -> None:
            if name == "starting":
                port = data.get("port") if data.get("sock") is None else data.get("sock")
                if is_server_path(port) or (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
                    # Forward while Jupyter is still starting: the tunnel is ready when it is.
                    progress.forward_to(port, "127.0.0.1")
                    token = data.get("token")
                    if is_safe_text(token, 256):
                        progress.poll_with(token)
            elif name == "stale":
                pid = data.get("pid")
                shown = f" (pid {pid})" if isinstance(pid, int) and not isinstance(pid, bool) else ""
                console.warn(f"the Jupyter nbremote started earlier{shown} had stopped; starting a fresh one")

        with console.progress(f"starting Jupyter on {place.label}"):
            reply = place.agent(hello_timeout=request.timeout + 10).request(
                "up",
                {
                    "dir": request.dir,
                    "mode": request.mode,
                    "env": request.env,
                    "timeout": request.start_timeout,
                    "socket": request.socket,
                    "keep_output": request.keep_output,
                },
                on_event=on_event,
                timeout=request.start_timeout + 30,
                on_contact=progress.contact,
            )
        server = parse_server(reply.get("server"), place.label)
        reused = reply.get("reused") is True
        what = "JupyterLab" if server.mode == "lab" else "Jupyter Notebook"
        if reused:
            console.done(f"{what} already running in {server.dir} (pid {server.pid})", time.monotonic() - began)
        else:
            console.done(
                f"{what} started in {server.dir} (pid {server.pid}, {server.launcher})", time.monotonic() - began
            )
        replaced = reply.get("replaced_pid")
        replaced = replaced if isinstance(replaced, int) and not isinstance(replaced, bool) else None
        return served_from(server, reused=reused, replaced=replaced, where=place.label)

    def stop(
        self, place: Place, directory: str, all_dirs: bool, console: Console, timeout: float
    ) -> list[dict[str, object]]:
        with console.progress(f"stopping Jupyter on {place.label}"):
            reply = place.agent(hello_timeout=timeout + 10).request(
                "down", {"dir": directory, "all": all_dirs}, timeout=60
            )
        items = reply.get("stopped")
        if not isinstance(items, list) or len(items) > MAX_SERVERS:
            raise invalid(place.label, "list of stopped servers")
        return [parse_stopped(doc, place.label) for doc in items]

    def listing(
        self, place: Place, records: dict[str, SessionRecord], show_token: bool, timeout: float
    ) -> list[tuple[dict[str, object], SessionRecord | None]]:
        reply = place.agent(hello_timeout=timeout + 10).request("ls", {}, timeout=60)
        items = reply.get("servers")
        if not isinstance(items, list) or len(items) > MAX_SERVERS:
            raise invalid(place.label, "list of servers")
        rows: list[tuple[dict[str, object], SessionRecord | None]] = []
        for doc in items:
            info = parse_server(doc, place.label)
            record = records.get(info.dir)
            local_port = info.port if isinstance(place, ThisMachine) else record.local_port if record else None
            rows.append(
                (
                    {
                        "dir": info.dir,
                        "mode": info.mode,
                        "pid": info.pid,
                        "remote_port": info.port,
                        "local_port": local_port,
                        "url": None
                        if local_port is None
                        else url_for(local_port, info.mode, info.token if show_token else masked(info.token)),
                        "started": info.started,
                        "running": doc.get("running") is True,
                        "kernels": info.kernels,
                        "busy": info.busy,
                        "last_activity": info.last_activity,
                        "launcher": info.launcher,
                    },
                    record,
                )
            )
        return rows

    def ended(self, place: Place, record: SessionRecord) -> NbremoteError | None:
        return None  # the agent can tell no more than the probe did: the server is gone

    def serving(self, record: SessionRecord) -> str:
        return ""

    def route(self, place: Place, served: Served) -> str:
        return f"{place.label}:{served.port}"

    def left_running(self, record: SessionRecord, label: str, stop: str) -> str:
        return f"the notebook keeps running on {label}. `{stop}` stops it."

    def release(self, place: Host) -> None:
        place.connection.close()
