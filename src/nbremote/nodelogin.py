"""ssh to the compute node running a Slurm job, where the cluster lets its owner in (pam_slurm_adopt).

Then Jupyter listens on the node's loopback only, and the laptop's forward ends
there: a second ssh, to the node, whose connection is carried through the login
node's master (`ProxyCommand ssh -S LOGIN_MASTER -W NODE:22`, no second login
to the login node), with the node's host key pinned. The keys pinned are the
ones the job read on the node itself (/etc/ssh/ssh_host_*_key.pub, see
agent/launcher.py) and the agent sent over the login's authenticated channel:
no key is learnt from the network between the login node and the node, so a
machine answering in the node's place is refused before any login.

The profile's `node_login` says whether to try: "auto" (the default) where the
node's sshd runs pam_slurm_adopt, falling back to Jupyter on the node's
NodeAddr when the node refuses the login; "yes" always, and a refusal is an
error; "no" never (Jupyter on NodeAddr, reached through the login node).
"auto" cannot wait for a refusal to choose where Jupyter listens, since
pam_slurm_adopt admits the login only once the job runs: so the job starts
Jupyter only after the laptop tried (agent/launcher.py asks, op_slurm_listen
answers), and asks at all only where the node's sshd runs pam_slurm_adopt.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path

from nbremote import paths
from nbremote.errors import ExitCode, NbremoteError
from nbremote.remote import Host
from nbremote.ssh import Connection, Target

SSH_PORT = 22
# A public key as known_hosts holds it after the host name: its type and base64 blob.
TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.reach import PathConnection

KEY_LINE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp[0-9]+|sk-[A-Za-z0-9@.-]+) [A-Za-z0-9+/]+={0,2}\Z")


def alias(addr: str) -> str:
    """The name the node's keys are pinned under: nothing else in known_hosts can answer for it."""
    return f"nbremote-node.{addr}"


def known_hosts_path(host: str, addr: str) -> Path:
    """nbremote's known_hosts for one node of one cluster (0600, in a 0700 folder)."""
    name = hashlib.sha256(f"{host}\0{addr}".encode()).hexdigest()[:16]
    folder = paths.state_dir() / "nodes"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"{name}.known"


def pin(host: str, node: str, addr: str, keys: list[str], job_id: str) -> None:
    """Pin the keys the job read on the node, replacing what an earlier job there reported."""
    good = [k for k in keys if isinstance(k, str) and KEY_LINE.match(k)]
    if not good:
        raise NbremoteError(
            f"Slurm job {job_id} found no host key of compute node {node} to pin "
            "(none readable in /etc/ssh/ssh_host_*_key.pub there)",
            hint='set node_login = "no" in the profile: Jupyter then listens on the node\'s address, '
            "reached through the login node",
            exit_code=ExitCode.HOST_KEY,
        )
    paths.write_private(known_hosts_path(host, addr), "".join(f"{alias(addr)} {k}\n" for k in good))


def connection(place: Host, addr: str, label: str | None = None) -> Connection:
    """The ssh connection to the node at addr, through the login node's master; connects nothing."""
    login = place.connection
    # ssh expands % in a ProxyCommand: the inner command's own (a relay's %h:%p) must stay as written.
    proxy = shlex.join(login.proxy_argv(addr, SSH_PORT)).replace("%", "%%")
    options = (
        *login.identity_options(),
        ("Port", str(SSH_PORT)),
        ("ProxyCommand", proxy),
        ("HostKeyAlias", alias(addr)),
        ("UserKnownHostsFile", str(known_hosts_path(place.host, addr))),
        ("GlobalKnownHostsFile", "/dev/null"),
        ("StrictHostKeyChecking", "yes"),
        ("UpdateHostKeys", "no"),
    )
    timeout = login.timeout
    target = Target(label=label or addr, destination=addr, options=options)
    # Never a prompt: the node takes the laptop's key or agent, or it is refused.
    return Connection(target, control_dir=paths.runtime_dir(), timeout=timeout, batch=True, persist=True)


def link(place: Host, hop: str | None) -> Connection | PathConnection:
    """What carries a session's forward: the login node's master, or the master to its node."""
    return place.connection if hop is None else connection(place, hop)


def log_in(place: Host, *, node: str, addr: str, keys: list[str], job_id: str) -> Connection:
    """Pin the node's keys and log in to it (a master kept for the forwards); errors say which step.
    A login that fails leaves the pinned keys as they were."""
    known = known_hosts_path(place.host, addr)
    before = known.read_text() if known.exists() else None
    pin(place.host, node, addr, keys, job_id)
    conn = connection(place, addr, label=node)
    if conn.master_alive():
        return conn
    try:
        conn.open_master()
    except NbremoteError as exc:
        if before is None:
            known.unlink(missing_ok=True)
        else:
            paths.write_private(known, before)
        if exc.exit_code == ExitCode.HOST_KEY:
            raise NbremoteError(
                f"compute node {node} ({addr}) showed a host key that is not one Slurm job {job_id} "
                "read on that node: refusing to connect",
                hint="something else answers at the node's address, or its sshd serves a key from outside "
                "/etc/ssh: tell the cluster's admins. Nothing was sent to it",
                exit_code=ExitCode.HOST_KEY,
            ) from None
        raise NbremoteError(
            f"ssh to compute node {node} ({addr}) through {place.label} failed: {exc.message}",
            hint='the cluster may not let users log in to the node of their job; node_login = "no" in the '
            "profile serves Jupyter on the node's address instead",
            # A node that takes no login from this laptop (pam_slurm_adopt, a key it lacks) refused
            # it; any other failure (no sshd there, the hop cut) left it unreached.
            exit_code=ExitCode.AUTH_FAILED if exc.exit_code == ExitCode.AUTH_FAILED else ExitCode.UNREACHABLE,
            details=exc.details,
        ) from None
    return conn
