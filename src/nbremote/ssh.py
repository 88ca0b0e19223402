"""The one place that runs the OpenSSH client.

Every step of a command reuses one authenticated connection: the first ssh
becomes the master (ControlMaster=auto) and keeps running in the background
(ControlPersist), so a password or 2FA prompt appears at most once, and each
later step costs about one round trip. The user's ~/.ssh/config, agent,
ProxyJump and known_hosts are honoured because we only add ``-o`` options.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nbremote import early, logs
from nbremote.errors import ExitCode, NbremoteError

log = logs.get(__name__)

# Names ssh would read as an option, or that the shell would split, never reach argv.
# \Z, not $: $ also matches before a final newline.
_DESTINATION = re.compile(r"^(?:[^\s@/\\'\"`$;&|<>()]+@)?[A-Za-z0-9_.:%\[\]-]+\Z")


# `ssh -G` names (lower case) of the settings that say who logs in, and how.
_IDENTITY = {
    "user": "User",
    "identityfile": "IdentityFile",
    "certificatefile": "CertificateFile",
    "identitiesonly": "IdentitiesOnly",
    "identityagent": "IdentityAgent",
}


@dataclass(frozen=True)
class Target:
    """A host as the user named it, reduced to what ssh takes."""

    label: str
    destination: str
    port: int | None = None
    # ssh_config settings passed as -o KEY=VALUE: a host profile's HostName, User, pinned key...
    options: tuple[tuple[str, str], ...] = ()


def parse_target(text: str) -> Target:
    """Accept `host`, `user@host`, an ssh_config alias, or `ssh://user@host:port`."""
    bad = NbremoteError(
        f"{text!r} is not a host",
        hint="give a name from ~/.ssh/config, user@host, or ssh://user@host:port",
        exit_code=ExitCode.USAGE,
    )
    if text.startswith("ssh://"):
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            raise bad from None
        if not parts.hostname or port == 0 or parts.path not in ("", "/") or parts.query or parts.fragment:
            raise bad
        host = parts.hostname
        destination = f"{parts.username}@{host}" if parts.username else host
    else:
        destination, port = text, None
    if destination.startswith("-") or not _DESTINATION.match(destination):
        raise bad
    return Target(label=text, destination=destination, port=port)


def _fingerprint_of_known_line(path: str, line_no: int) -> str | None:
    try:
        line = Path(path).read_text().splitlines()[line_no - 1]
    except (OSError, IndexError):
        return None
    import tempfile  # imported where used: kept out of `up HOST`'s start-up

    with tempfile.NamedTemporaryFile("w", suffix=".pub") as handle:
        handle.write(line + "\n")
        handle.flush()
        done = subprocess.run(["ssh-keygen", "-l", "-f", handle.name], capture_output=True, text=True)
    fields = done.stdout.split()
    return fields[1] if done.returncode == 0 and len(fields) > 1 else None


@dataclass(frozen=True)
class Endpoint:
    user: str
    hostname: str
    port: int


class Connection:
    """ssh to one target through a control socket in our private runtime dir.

    Nothing connects in the constructor: the first ``run`` of a remote command
    opens the master when none is alive.
    """

    def __init__(self, target: Target, *, control_dir: Path, timeout: float, batch: bool, persist: bool):
        self.target = target
        self.timeout = timeout
        self.batch = batch
        self.persist = persist
        digest = hashlib.sha256(
            f"{target.destination}\0{target.port}".encode() + (repr(target.options).encode() if target.options else b"")
        ).hexdigest()[:20]
        self.control_path = control_dir / digest

    def _options(self) -> list[str]:
        options = [
            "-o",
            f"ControlPath={self.control_path}",
            "-o",
            f"ConnectTimeout={max(1, round(self.timeout))}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "ExitOnForwardFailure=yes",
        ]
        if self.batch:
            options += ["-o", "BatchMode=yes"]
        if self.target.port is not None:
            options += ["-p", str(self.target.port)]
        for key, value in self.target.options:
            options += ["-o", f"{key}={value}"]
        return options

    def command_argv(self, remote_command: str) -> list[str]:
        persist = "yes" if self.persist else "no"
        return [
            "ssh",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPersist={persist}",
            *self._options(),
            "--",
            self.target.destination,
            remote_command,
        ]

    def interactive_argv(self, command: list[str]) -> list[str]:
        """ssh with a terminal (-t) running argv there, through the master when one is up."""
        return [
            "ssh",
            "-t",
            "-o",
            "ControlMaster=auto",
            "-o",
            "ControlPersist=no",
            *self._options(),
            "--",
            self.target.destination,
            shlex.join(command),
        ]

    def round_trip(self) -> float:
        """Seconds for a trivial command over the open master: one honest network round trip."""
        argv = ["ssh", "-o", "ControlMaster=no", *self._options(), "--", self.target.destination, "true"]
        started = time.monotonic()
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout + 5, env=ssh_env()
        )
        if done.returncode != 0:
            raise self.failure(done.stderr)
        return time.monotonic() - started

    def ssh_argv(self, args: list[str]) -> list[str]:
        """Plain ssh (a shell, or ARGS as ssh joins them) through the live master."""
        return ["ssh", "-o", "ControlMaster=no", *self._options(), "--", self.target.destination, *args]

    def proxy_argv(self, host: str, port: int) -> list[str]:
        """ssh that carries one TCP connection to host:port through this live master (`-W`): a
        ProxyCommand to a host behind this one with no second login here. BatchMode: were the
        master gone, no password prompt may appear where no one reads it."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return [
            "ssh",
            "-o",
            "ControlMaster=no",
            "-o",
            "BatchMode=yes",
            *self._options(),
            "-W",
            where,
            "--",
            self.target.destination,
        ]

    def identity_options(self) -> tuple[tuple[str, str], ...]:
        """The user and keys this target logs in with, read from `ssh -G` (no connection): a host
        behind it (a cluster's compute node) takes the same."""
        argv = ["ssh", "-G", *self._options(), "--", self.target.destination]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=ssh_env())
        lines = [line.partition(" ") for line in done.stdout.splitlines()]
        return tuple((_IDENTITY[key], value) for key, _, value in lines if key in _IDENTITY)

    def _control_argv(self, *args: str) -> list[str]:
        return ["ssh", *self._options(), *args, "--", self.target.destination]

    def _control(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run_control(self._control_argv(*args))

    def _run_control(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        log.debug("run %s", " ".join(argv))
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=self.timeout + 5, env=ssh_env()
        )

    def may_have_master(self) -> bool:
        """Whether a master may be alive, without asking it: its control socket exists."""
        return self.control_path.exists()

    def master_alive(self) -> bool:
        if not self.may_have_master():
            return False
        return self._control("-O", "check").returncode == 0

    def forward_argv(self, local_port: int, remote_port: int | str, remote_host: str = "127.0.0.1") -> list[str]:
        return self._control_argv("-O", "forward", "-L", _spec(local_port, remote_port, remote_host))

    def forward(self, local_port: int, remote_port: int | str, remote_host: str = "127.0.0.1") -> None:
        argv = self.forward_argv(local_port, remote_port, remote_host)
        # The console script may have begun this very forward before the client's import.
        done = early.claim(argv) or self._run_control(argv)
        if done.returncode != 0:
            raise NbremoteError(
                f"local port {local_port} is busy",
                hint="pick another with --port, or leave --port out to take a free one",
                exit_code=ExitCode.PORT_BUSY,
                details=[line for line in done.stderr.splitlines() if line.strip()],
            )

    def cancel(self, local_port: int, remote_port: int | str, remote_host: str = "127.0.0.1") -> bool:
        return self._control("-O", "cancel", "-L", _spec(local_port, remote_port, remote_host)).returncode == 0

    def master_argv(self, connect_timeout: float | None = None) -> list[str]:
        """ssh that logs in, puts the master in the background and exits 0, or fails."""
        options = self._options()
        if connect_timeout is not None:
            options[options.index(f"ConnectTimeout={max(1, round(self.timeout))}")] = (
                f"ConnectTimeout={max(1, round(connect_timeout))}"
            )
        # A master opened for one short command (persist=False) still outlives it a little,
        # so the next command reuses it, but never lingers for good.
        persist = "yes" if self.persist else "60"
        return [
            "ssh",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPersist={persist}",
            *options,
            "-N",
            "-f",
            "--",
            self.target.destination,
        ]

    def start_master(self, connect_timeout: float | None = None) -> subprocess.Popen[str]:
        """master_argv started, not waited for: a race of addresses kills the losers."""
        argv = self.master_argv(connect_timeout)
        log.debug("start %s", " ".join(argv))
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ssh_env()
        )

    def open_master(self, connect_timeout: float | None = None) -> None:
        """Log in and leave the master in the background, with no remote command."""
        argv = self.master_argv(connect_timeout)
        log.debug("run %s", " ".join(argv))
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            # While a person may be typing a password, only ssh's own timeouts apply.
            timeout=(connect_timeout or self.timeout) + 10 if self.batch else None,
            env=ssh_env(),
        )
        if done.returncode != 0:
            raise self.failure(done.stderr)

    def stop(self) -> None:
        """Let the master end once its last session does, and free its socket for a new one now.

        Unlike close, an agent call still running through it (another `up` waiting
        for its Slurm job) is not cut off.
        """
        if self.control_path.exists():
            self._control("-O", "stop")

    def close(self) -> None:
        """End the master and every forward in it; a wedged one is killed."""
        if not self.control_path.exists():
            return
        try:
            if self._control("-O", "exit").returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        # A master that does not answer on its socket still holds our local ports.
        for pid in self._master_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.control_path.unlink(missing_ok=True)

    def _master_pids(self) -> list[int]:
        needle = f"ControlPath={self.control_path}".encode()
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if proc.stat().st_uid == os.getuid() and needle in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids

    def endpoint(self) -> Endpoint:
        """What ssh resolves the target to, read from `ssh -G` (no connection)."""
        argv = ["ssh", "-G", *self._options(), "--", self.target.destination]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=ssh_env())
        values = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
        try:
            port = int(values.get("port", "22"))
        except ValueError:
            port = 22
        return Endpoint(values.get("user", ""), values.get("hostname", self.target.destination), port)

    def failure(self, stderr: str) -> NbremoteError:
        """Turn ssh's exit 255 and its stderr into the error a user can act on."""
        return classify_ssh_failure(stderr, self.target, self.endpoint(), self.timeout)


def _spec(local_port: int, remote: int | str, remote_host: str = "127.0.0.1") -> str:
    """Local loopback port to a port on the server (or, for a Slurm job, on its compute node),
    or to a Unix socket path on the server (up --socket)."""
    if isinstance(remote, str):
        return f"127.0.0.1:{local_port}:{remote}"
    host = f"[{remote_host}]" if ":" in remote_host else remote_host
    return f"127.0.0.1:{local_port}:{host}:{remote}"


def ssh_env() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"  # ssh's messages are matched below
    return env


def classify_ssh_failure(stderr: str, target: Target, where: Endpoint, timeout: float) -> NbremoteError:
    lines = [line for line in stderr.splitlines() if line.strip()]
    text = "\n".join(lines)
    name = target.label
    address = f"{where.hostname}:{where.port}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        new = re.search(r"key sent by the remote host is\s*\n?\s*(SHA256:\S+?)\.?$", text, re.M)
        offending = re.search(r"Offending \S+ key in (.+):(\d+)", text)
        old = _fingerprint_of_known_line(offending.group(1), int(offending.group(2))) if offending else None
        hint = (
            "if the server was reinstalled, check the new key with its owner, then "
            f"remove the old one with `ssh-keygen -R {where.hostname}`; otherwise someone may be "
            "intercepting the connection"
        )
        if "HostKeyAlias" in dict(target.options):
            hint = (
                f"if {name} was really reinstalled, check the new fingerprint with its owner "
                f"(`nbremote server invite` there prints it), then pin it again with "
                f"`nbremote remove {name}` and `nbremote add {name} --invite LINE`; "
                "otherwise someone may be intercepting the connection"
            )
        return NbremoteError(
            f"the host key of {name} ({address}) has changed: refusing to connect",
            hint=hint,
            exit_code=ExitCode.HOST_KEY,
            details=[
                f"expected {old or 'the key in known_hosts'}",
                f"received {new.group(1) if new else 'a different key'}",
            ],
        )
    if "Host key verification failed" in text:
        return NbremoteError(
            f"the host key of {name} ({address}) is not known",
            hint=f"connect once with `ssh {target.destination}` to check and accept it",
            exit_code=ExitCode.HOST_KEY,
        )
    if "Permission denied" in text or "Too many authentication failures" in text:
        methods = re.search(r"Permission denied \(([^)]*)\)", text)
        return NbremoteError(
            f"{where.user}@{where.hostname} refused the login" + (f" (offered: {methods.group(1)})" if methods else ""),
            hint=f"`nbremote add {name}` sets up a key for this host; or check the user name",
            exit_code=ExitCode.AUTH_FAILED,
        )
    for pattern, reason in (
        ("Connection refused", "connection refused"),
        ("timed out", f"no answer after {timeout:g} s"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network is unreachable"),
        ("Could not resolve hostname", "name not found"),
        ("Connection closed by", "the server closed the connection"),
        ("Connection reset", "the connection was reset"),
    ):
        if pattern in text:
            return NbremoteError(
                f"cannot reach {name} at {address} ({reason})",
                hint="check that the server is on and sshd runs, and the address and port",
                exit_code=ExitCode.UNREACHABLE,
            )
    return NbremoteError(
        f"ssh to {name} failed" + (f": {lines[-1]}" if lines else ""),
        hint="run with --verbose to see each step",
        exit_code=ExitCode.ERROR,
        details=lines[:-1][-5:],
    )
