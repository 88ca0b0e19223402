"""A cluster whose users may ssh to the node running their job (pam_slurm_adopt).

The compute node is a host of its own (slurmlab.py's node_host): its sshd's PAM
account stack ends with Debian's pam_slurm_adopt, so alice's login there is
accepted while she has a job on it and refused otherwise, as on such clusters.
The laptop goes through the login node (`ssh -J`), the node's host key pinned
in a known_hosts file as a cluster's ssh_known_hosts would hold it.

nbremote uses that login (nodelogin.py, docs/security.md): `up` there keeps
Jupyter on the node's loopback and forwards through the laptop's own ssh to the
node, carried by the login node's master, with the host key the job read on
the node pinned; a node showing another key is refused and the job cancelled;
the keeper logs in to both again on the same local port; and a profile's
`node_login = "no"`, or a node that refuses the login under "auto", keeps the
listener on the node's NodeAddr as on clusters without pam_slurm_adopt.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from slurmlab import NODE, NODE_ADDR, SlurmCluster
from test_resilience import _status_through
from test_up import laptop_probe, token_of, wait_until

from netlab import ALICE, LAPTOP_USER, SERVER_ADDR, SERVER_HOST_ALIAS


@pytest.fixture
def cluster(lab):
    cluster = SlurmCluster.start(lab, node_host=True)
    known = lab.user(LAPTOP_USER).home / ".ssh" / "known_hosts.node"
    known.write_text(f"{NODE_ADDR} {cluster.node_host_key()}\n")
    yield cluster, known
    known.unlink()
    cluster.cancel_all()
    cluster.stop()


def ssh_to_node(lab, known, *command: str):
    return lab.laptop_exec(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-J",
            SERVER_HOST_ALIAS,
            f"{ALICE}@{NODE_ADDR}",
            *command,
        ],
        timeout=30,
    )


def test_ssh_to_the_node_is_accepted_only_while_a_job_of_the_user_runs_there(lab, cluster):
    cluster, known = cluster
    refused = ssh_to_node(lab, known, "true")
    assert refused.returncode == 255, refused.stderr
    assert "Connection closed" in refused.stderr or "Permission denied" in refused.stderr, refused.stderr

    job = lab.server_exec(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "sleep 300"], user=ALICE)
    assert job.returncode == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 30
    while cluster.job_field(job_id, "JobState") != "RUNNING":
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.2)
    accepted = ssh_to_node(lab, known, "cat", "/proc/sys/kernel/hostname")
    assert accepted.returncode == 0, accepted.stderr + cluster.logs()

    cluster.cancel_all()
    again = ssh_to_node(lab, known, "true")
    assert again.returncode == 255, again.stderr


def up_json(lab, cluster, host: str = "server") -> dict:
    done = lab.nbremote("up", host, "--slurm", "--time=10", "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr + cluster.logs()
    return json.loads(done.stdout) | {"stderr": done.stderr}


def node_listeners(cluster) -> list[tuple[str, str]]:
    """(local address:port, process) of each TCP listener on the node, slurmd's and sshd's left out."""
    done = cluster.node_exec(["ss", "-ltnpH"])
    rows = []
    for line in done.stdout.splitlines():
        fields = line.split()
        process = fields[5] if len(fields) > 5 else ""
        if '"slurmd"' not in process and '"sshd"' not in process:
            rows.append((fields[3], process))
    return rows


def laptop_ssh_pids(lab) -> list[int]:
    done = lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"])
    return [int(p) for p in done.stdout.split()]


def node_masters(lab) -> list[int]:
    """The laptop's ssh processes to a compute node (their options name its pinned key's alias)."""
    pids = []
    for pid in laptop_ssh_pids(lab):
        try:
            if b"nbremote-node." in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def pinned(lab) -> dict[str, str]:
    folder = state_dir(lab) / "nodes"
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else {}


def state_dir(lab):
    return lab.user(LAPTOP_USER).home / ".local" / "state" / "nbremote"


def test_up_logs_in_to_the_node_keeps_jupyter_on_its_loopback_and_the_keeper_rebuilds_that_path(lab, cluster):
    cluster, _ = cluster
    result = up_json(lab, cluster)
    assert (result["node"], result["node_login"], result["remote_addr"]) == (NODE, True, "127.0.0.1")
    base = f"http://127.0.0.1:{result['local_port']}"
    assert laptop_probe(lab, "status", base, token_of(result["url"])) == {"with_token": 200, "without_token": 403}

    # Jupyter's listener is on the node's loopback, and nothing of the job's is on its cluster address.
    listening = node_listeners(cluster)
    assert (f"127.0.0.1:{result['remote_port']}") in [a for a, _ in listening], listening
    assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a, _ in listening), listening

    # The key pinned is the one the node's sshd serves, in a 0600 file of nbremote's.
    known = list((state_dir(lab) / "nodes").glob("*.known"))
    assert len(known) == 1 and stat.S_IMODE(known[0].stat().st_mode) == 0o600
    assert known[0].read_text() == f"nbremote-node.{NODE_ADDR} {cluster.node_host_key()}\n"

    # `up` again finds the job, whose Jupyter is on the node's loopback already: the same path.
    again = lab.nbremote("up", "server", "--slurm", "--time=10", "--no-browser", "--detach", timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"already running in Slurm job {result['job_id']} on {NODE}" in again.stderr
    assert f"localhost:{result['local_port']} → server → {NODE} (ssh) → 127.0.0.1:{result['remote_port']}" in (
        again.stderr
    )

    # Every ssh of the laptop killed (the login master and the node's): the background keeper
    # logs in to both again and the same local port answers.
    for pid in laptop_ssh_pids(lab):
        os.kill(pid, signal.SIGKILL)
    assert _status_through(lab, result) != 200
    assert wait_until(lambda: _status_through(lab, result) == 200, 30), (state_dir(lab) / "keeper.log").read_text()
    assert cluster.squeue() == [result["job_id"]]

    down = lab.nbremote("down", "server")
    assert down.returncode == 0, down.stderr
    assert cluster.squeue() == []
    assert _status_through(lab, result) != 200


def test_a_node_showing_another_key_than_the_job_read_there_is_refused_and_nothing_changes(lab, cluster):
    cluster, _ = cluster
    real = cluster.node_etc_ssh / "ssh_host_ed25519_key.pub"
    kept = real.read_text()
    other = lab.workdir / "other_node_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    # The job reads this public key on the node, while its sshd keeps serving its own: what a
    # machine answering in the node's place looks like to the laptop.
    real.write_text((other.with_suffix(".pub")).read_text())
    log = lab.server_run / "slurm" / "node-sshd.log"
    log_before = log.read_text() if log.exists() else ""
    pinned_before = pinned(lab)
    try:
        done = lab.nbremote("up", "server", "--slurm", "--time=10", "--no-browser", "--detach", "--json", timeout=120)
    finally:
        real.write_text(kept)
        other.unlink()
        other.with_suffix(".pub").unlink()
    assert done.returncode == 5, done.stderr + cluster.logs()
    assert f"compute node {NODE} ({NODE_ADDR}) showed a host key that is not one Slurm job" in done.stderr
    assert "refusing to connect" in done.stderr and "is cancelled: it waited for that login" in done.stderr
    cluster.wait_empty()  # the job that waited for the login is gone
    after = log.read_text()[len(log_before) :] if log.exists() else ""
    assert "Accepted" not in after and ALICE not in after, after  # no login was tried
    sessions = state_dir(lab) / "sessions.json"
    assert not sessions.exists() or json.loads(sessions.read_text()) == {}
    assert node_masters(lab) == []
    assert pinned(lab) == pinned_before  # the key the job reported is not left pinned


@pytest.fixture
def cluster_profile(lab):
    """Makes the profile `cluster` for the login node, with scheduler "slurm" and the node_login given."""
    yield lambda node_login: add_cluster_profile(lab, node_login)
    removed = lab.nbremote("remove", "cluster")
    assert removed.returncode == 0, removed.stderr


def add_cluster_profile(lab, node_login: str) -> None:
    added = lab.nbremote("add", "cluster", "--address", SERVER_ADDR, "--user", ALICE)
    assert added.returncode == 0, added.stderr
    hosts = lab.user(LAPTOP_USER).home / ".config" / "nbremote" / "hosts.toml"
    text = hosts.read_text().replace(
        "[hosts.cluster]\n", f'[hosts.cluster]\nscheduler = "slurm"\nnode_login = "{node_login}"\n'
    )
    hosts.write_text(text)


def test_node_login_no_in_the_profile_keeps_jupyter_on_the_node_address(lab, cluster, cluster_profile):
    cluster, _ = cluster
    cluster_profile("no")
    result = up_json(lab, cluster, "cluster")
    assert (result["node"], result["node_login"], result["remote_addr"]) == (NODE, False, NODE_ADDR)
    assert "logged in to" not in result["stderr"]
    base = f"http://127.0.0.1:{result['local_port']}"
    assert laptop_probe(lab, "status", base, token_of(result["url"])) == {"with_token": 200, "without_token": 403}
    listening = cluster.node_exec(["ss", "-ltnH", f"sport = :{result['remote_port']}"]).stdout.split()
    assert listening[3] == f"{NODE_ADDR}:{result['remote_port']}", listening
    down = lab.nbremote("down", "cluster")
    assert down.returncode == 0, down.stderr


def stop_node_sshd(cluster) -> None:
    pid = int((cluster.state / "node-sshd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not (cluster.state / "node-sshd.pid").exists(), 5)


def test_a_node_that_refuses_ssh_falls_back_to_its_address_under_auto_and_fails_under_yes(
    lab, cluster, cluster_profile
):
    cluster, _ = cluster
    stop_node_sshd(cluster)  # the node takes no ssh at all: connection refused through the login node

    result = up_json(lab, cluster)  # no profile: node_login "auto"
    assert f"{NODE} refused ssh from this laptop (" in result["stderr"]
    assert f"Jupyter listens on its cluster address {NODE_ADDR} instead" in result["stderr"]
    assert (result["node_login"], result["remote_addr"]) == (False, NODE_ADDR)
    assert _status_through(lab, result) == 200
    assert lab.nbremote("down", "server").returncode == 0

    cluster_profile("yes")
    done = lab.nbremote("up", "cluster", "--slurm", "--time=10", "--no-browser", "--detach", timeout=120)
    assert done.returncode == 3, done.stderr
    assert f"ssh to compute node {NODE} ({NODE_ADDR}) through cluster failed: " in done.stderr
    assert "is cancelled: it waited for that login" in done.stderr
    cluster.wait_empty()
    sessions = state_dir(lab) / "sessions.json"
    assert not sessions.exists() or json.loads(sessions.read_text()) == {}
