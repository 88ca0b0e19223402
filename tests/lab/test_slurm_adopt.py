"""A cluster whose users may ssh to the node running their job (pam_slurm_adopt).

The compute node is a host of its own (slurmlab.py's node_host): its sshd's PAM
account stack ends with Debian's pam_slurm_adopt, so alice's login there is
accepted while she has a job on it and refused otherwise, as on such clusters.
The laptop goes through the login node (`ssh -J`), the node's host key pinned
in a known_hosts file as a cluster's ssh_known_hosts would hold it.

nbremote does not use that login yet (docs/security.md): on such a node `up`
still serves Jupyter on the node's NodeAddr, reached from the login node over
the cluster network, which the second test shows on this two-host cluster.
"""

from __future__ import annotations

import json
import time

import pytest
from slurmlab import NODE, NODE_ADDR, SlurmCluster
from test_up import laptop_probe, token_of

from netlab import ALICE, LAPTOP_USER, SERVER_HOST_ALIAS


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


def test_up_on_a_node_of_its_own_serves_jupyter_on_its_node_address(lab, cluster):
    cluster, _ = cluster
    done = lab.nbremote("up", "server", "--slurm", "--time=10", "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr + cluster.logs()
    result = json.loads(done.stdout)
    assert (result["node"], result["remote_addr"]) == (NODE, NODE_ADDR)
    base = f"http://127.0.0.1:{result['local_port']}"
    assert laptop_probe(lab, "status", base, token_of(result["url"])) == {"with_token": 200, "without_token": 403}
    listening = cluster.node_exec(["ss", "-ltnH", f"sport = :{result['remote_port']}"]).stdout.split()
    assert listening[3] == f"{NODE_ADDR}:{result['remote_port']}", listening
    down = lab.nbremote("down", "server")
    assert down.returncode == 0, down.stderr
