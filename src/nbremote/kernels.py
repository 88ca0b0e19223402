"""The server's Python as a kernel of the laptop's Jupyter, VS Code or PyCharm.

`nbremote kernels install HOST` writes a kernel spec in the laptop's Jupyter data
dir. Its argv is this module's proxy (`python -m nbremote.kernels HOST ENV FILE`):
the laptop's Jupyter starts it like any kernel, with a connection file naming five
local ports and a signing key. The proxy asks the agent for an ipykernel on the
server (same key, its own ports on the server's loopback), forwards the five local
ports to them through nbremote's ssh master for HOST, and stays up as "the kernel
process": it relays Ctrl-C (SIGINT) as an interrupt, stops the remote kernel when
it is stopped, and exits when the remote kernel does (a shutdown request).

While it runs it watches the path end to end: a ZeroMQ peer sends its greeting as
soon as a connection is made, so one byte read through the heartbeat forward proves
ssh, the network and the kernel are there, without a ZeroMQ library on the laptop.
When that fails twice it heals the tunnel the way the keeper does: the forwards put
back on the same local ports (a master another nbremote process rebuilt is reused),
else a fresh login. The kernel on the server never notices an outage, so its
variables survive it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nbremote.errors import ExitCode, NbremoteError
from nbremote.keeper import CHECK_EVERY, CONNECT_TIMEOUT, FAILED_PROBES, backoff
from nbremote.remote import Host, place_for
from nbremote.servers import validate_text

log = logging.getLogger(__name__)

SPEC_PREFIX = "nbremote-"
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
PROBE_TIMEOUT = 2.0
START_TIMEOUT = 60.0


# --- kernel specs ----------------------------------------------------------------------


def data_dir() -> Path:
    """Jupyter's user data dir, as jupyter_core computes it (without importing it)."""
    if os.environ.get("JUPYTER_DATA_DIR"):
        return Path(os.environ["JUPYTER_DATA_DIR"])
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Jupyter"
    if os.name == "nt":
        appdata = os.environ.get("APPDATA")
        return Path(appdata) / "jupyter" if appdata else home / ".jupyter" / "data"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "jupyter"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "x"


def spec_name(host: str, env: str | None) -> str:
    """A kernel name Jupyter accepts ([a-z0-9._-]); the hash keeps two environments apart."""
    if env is None:
        return SPEC_PREFIX + _slug(host)
    digest = hashlib.sha256(f"{host}\0{env}".encode()).hexdigest()[:6]
    return f"{SPEC_PREFIX}{_slug(host)}-{_slug(os.path.basename(env.rstrip('/')) or env)}-{digest}"


@dataclass(frozen=True)
class KernelSpec:
    name: str
    host: str
    env: str | None
    path: Path
    display_name: str
    python: str | None = None  # the server's python, when install asked the agent

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "host": self.host,
            "env": self.env,
            "path": str(self.path),
            "display_name": self.display_name,
            "python": self.python,
        }


def _display_name(host: str, env: str | None) -> str:
    return f"Python on {host}" + (f" ({env})" if env else "") + " · nbremote"


def _spec_document(host: str, env: str | None) -> dict:
    return {
        "argv": [sys.executable, "-m", "nbremote.kernels", host, env or "", "{connection_file}"],
        "display_name": _display_name(host, env),
        "language": "python",
        "interrupt_mode": "signal",  # SIGINT to the proxy, which sends it on to the kernel
        "metadata": {"nbremote": {"host": host, "env": env}, "debugger": False},
    }


def _read_spec(path: Path) -> KernelSpec | None:
    try:
        doc = json.loads((path / "kernel.json").read_text())
        meta = doc["metadata"]["nbremote"]
        host, env = meta["host"], meta.get("env")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(host, str) or not (env is None or isinstance(env, str)):
        return None
    return KernelSpec(name=path.name, host=host, env=env, path=path, display_name=str(doc.get("display_name", "")))


def installed() -> list[KernelSpec]:
    """The kernel specs nbremote wrote, by name."""
    folder = data_dir() / "kernels"
    if not folder.is_dir():
        return []
    found = (_read_spec(p) for p in sorted(folder.iterdir()) if p.name.startswith(SPEC_PREFIX))
    return [spec for spec in found if spec is not None]


def install(*, host: str, env: str | None, timeout: float, interactive: bool) -> KernelSpec:
    """Check the server has ipykernel in ENV, then write the kernel spec (replacing its old one)."""
    if env is not None:
        validate_text(env, "environment")
    place = place_for(host, timeout=timeout, interactive=interactive, persist=False)
    if not isinstance(place, Host):
        raise NbremoteError(
            "kernels install needs a HOST: a kernel on this machine needs no nbremote",
            hint="`python -m ipykernel install --user` installs this machine's own",
            exit_code=ExitCode.USAGE,
        )
    reply = place.agent(hello_timeout=timeout + 10).request("kernel_check", {"env": env}, timeout=timeout + 30)
    python = reply.get("python") if isinstance(reply.get("python"), str) else None
    name = spec_name(place.host, env)
    path = data_dir() / "kernels" / name
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / ".kernel.json.tmp"
    tmp.write_text(json.dumps(_spec_document(place.host, env), indent=1) + "\n")
    tmp.replace(path / "kernel.json")
    return KernelSpec(
        name=name, host=place.host, env=env, path=path, display_name=_display_name(place.host, env), python=python
    )


def remove(*, host: str, env: str | None) -> KernelSpec:
    """Remove HOST's kernel spec for ENV; kernels running from it carry on until they stop."""
    spec = next((s for s in installed() if s.host == host and s.env == env), None)
    if spec is None:
        env_text = f" with --env {env}" if env else ""
        raise NbremoteError(
            f"no nbremote kernel for {host}{env_text} is installed",
            hint="`nbremote kernels ls` lists them",
            exit_code=ExitCode.USAGE,
        )
    for child in spec.path.iterdir():
        child.unlink()
    spec.path.rmdir()
    return spec


# --- the proxy a kernel spec runs ------------------------------------------------------


def read_connection_file(path: str) -> dict:
    doc = json.loads(Path(path).read_text())
    if doc.get("transport", "tcp") != "tcp" or not all(isinstance(doc.get(c), int) for c in CHANNELS):
        raise NbremoteError(f"{path} is not a TCP connection file with five ports", exit_code=ExitCode.USAGE)
    return doc


def hb_probe(port: int, timeout: float = PROBE_TIMEOUT) -> str:
    """'ok' when the kernel's greeting arrives through the forward, 'gone' when ssh
    closes it at once (the kernel is not listening), 'lost' when no answer comes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return "ok" if sock.recv(1) else "gone"
    except OSError:  # refused (no forward: its master has gone) or timed out
        return "lost"


class KernelProxy:
    def __init__(self, place: Host, env: str | None, connection: dict, *, sleep=time.sleep, clock=time.monotonic):
        self.place = place
        self.env = env
        self.connection = connection
        self.local = {c: connection[c] for c in CHANNELS}
        self.remote: dict[str, int] = {}
        self.kernel: dict = {}
        self.sleep = sleep
        self.clock = clock

    def _agent(self, op: str, args: dict, timeout: float) -> dict:
        return self.place.agent(hello_timeout=timeout).request(op, args, timeout=timeout + 30)

    def start(self) -> None:
        if not self.place.connection.master_alive():
            self.place.connection.open_master()
        reply = self._agent(
            "kernel_start",
            {
                "env": self.env,
                "key": self.connection.get("key", ""),
                "signature_scheme": self.connection.get("signature_scheme", "hmac-sha256"),
                "timeout": START_TIMEOUT,
            },
            START_TIMEOUT,
        )
        ports = reply.get("ports")
        if not isinstance(ports, dict) or not all(
            isinstance(ports.get(c), int) and 0 < ports[c] < 65536 for c in CHANNELS
        ):
            raise NbremoteError(
                f"the agent on {self.place.label} sent invalid kernel ports", exit_code=ExitCode.AGENT_FAILED
            )
        self.remote = {c: ports[c] for c in CHANNELS}
        self.kernel = {"id": reply.get("id"), "pid": reply.get("pid")}
        self._forward()
        log.info(
            "kernel %s (pid %s) on %s with %s",
            self.kernel["id"],
            self.kernel["pid"],
            self.place.label,
            reply.get("python"),
        )

    def _forward(self) -> None:
        for channel in CHANNELS:
            self.place.connection.forward(self.local[channel], self.remote[channel])

    def interrupt(self) -> None:
        with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
            self._agent("kernel_signal", dict(self.kernel, signal_name="INT"), 10)

    def stop(self) -> None:
        with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
            self._agent("kernel_stop", dict(self.kernel), 10)
        for channel in CHANNELS:
            with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
                self.place.connection.cancel(self.local[channel], self.remote[channel])

    def heal(self) -> None:
        """Put the forwards back: on the master as it is now if that works (another nbremote
        process may have rebuilt it), else on a fresh login, retried until one works."""
        conn = self.place.connection
        began = self.clock()
        log.warning("lost the kernel's connection to %s; reconnecting", self.place.label)
        with contextlib.suppress(NbremoteError, subprocess.TimeoutExpired):
            if conn.master_alive():
                self._forward()
                if hb_probe(self.local["hb_port"]) == "ok":
                    log.warning("back after %.1f s (forwards put back)", self.clock() - began)
                    return
        conn.close()
        attempt = 0
        while True:
            attempt += 1
            tried = self.clock()
            try:
                conn.open_master(connect_timeout=CONNECT_TIMEOUT)
                self._forward()
            except (NbremoteError, subprocess.TimeoutExpired) as exc:
                log.info("attempt %d failed: %s", attempt, getattr(exc, "message", exc))
                conn.close()
                self.sleep(max(0.0, backoff(attempt) - (self.clock() - tried)))
                continue
            log.warning(
                "back after %.1f s: the kernel's ports forward to %s again", self.clock() - began, self.place.label
            )
            return

    def watch(self) -> None:
        """Until the remote kernel ends: probe, and heal after FAILED_PROBES lost in a row."""
        failures = 0
        while True:
            self.sleep(CHECK_EVERY)
            seen = hb_probe(self.local["hb_port"])
            if seen == "ok":
                failures = 0
            elif seen == "gone" and self.place.connection.master_alive():
                log.info("the kernel on %s has ended", self.place.label)
                return
            else:
                failures += 1
                if failures >= FAILED_PROBES:
                    self.heal()
                    failures = 0


def main(argv: list[str]) -> int:
    host, env, connection_file = argv
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="[nbremote kernel on " + host.replace("%", "%%") + "] %(message)s"
    )
    place = place_for(host, timeout=10, interactive=False, persist=True)
    assert isinstance(place, Host)
    proxy = KernelProxy(place, env or None, read_connection_file(connection_file))

    def on_term(*_) -> None:
        proxy.stop()
        os._exit(0)

    # Ctrl-C in the editor: Jupyter signals this process; the kernel there gets the interrupt.
    signal.signal(signal.SIGINT, lambda *_: threading.Thread(target=proxy.interrupt, daemon=True).start())
    signal.signal(signal.SIGTERM, on_term)
    try:
        proxy.start()
        proxy.watch()
    except NbremoteError as exc:
        log.error("%s%s", exc.message, f" ({exc.hint})" if exc.hint else "")
        proxy.stop()
        return 1
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
