"""Jupyter and jobs on Slurm, end to end: the real CLI on the laptop, sshd on the
login node, and a real single-node Slurm (slurmctld, slurmd, munge) whose node
has one fake GPU, all in the server namespace (slurmlab.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

import pytest
from slurmlab import NODE, SlurmCluster
from test_up import laptop_probe, token_of, wait_until

from netlab import ALICE, BOB

HOME = f"/home/{ALICE}"


@pytest.fixture(scope="module")
def _cluster(lab):
    cluster = SlurmCluster.start(lab)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster(_cluster):
    yield _cluster
    _cluster.cancel_all()  # before the lab's cleanup kills the users' processes under Slurm


def up_json(lab, *args: str, timeout: float = 120) -> dict:
    done = lab.nbremote("up", "server", *args, "--no-browser", "--detach", "--json", timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_up_with_a_gpu_gives_a_notebook_whose_kernel_sees_slurms_gpu(lab, cluster):
    result = up_json(lab, "--slurm", "--gres=gpu:1")
    assert result["scheduler"] == "slurm" and result["node"] == NODE and result["reused"] is False
    assert cluster.squeue() == [result["job_id"]]
    base = f"http://127.0.0.1:{result['local_port']}"
    token = token_of(result["url"])
    assert laptop_probe(lab, "status", base, token) == {"with_token": 200, "without_token": 403}
    out = laptop_probe(lab, "run", base, token,
                       "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('SLURM_JOB_ID'))")
    assert out["stdout"].split() == ["0", result["job_id"]]

    # Jupyter listens on the node's address as Slurm knows it (NodeAddr) only.
    ready = json.loads(lab.server_exec(["sh", "-c", "cat ~/.local/state/nbremote/slurm/*.ready"], user=ALICE).stdout)
    assert ready["addr"] == "127.0.0.1" and ready["port"] == result["remote_port"]
    listening = lab.server_exec(["ss", "-ltnH", f"sport = :{ready['port']}"]).stdout.split()
    assert listening[3] == f"127.0.0.1:{ready['port']}", listening
    # The token is on no command line and in no file another user can read.
    assert token not in lab.server_exec(["ps", "-eo", "args"], user=BOB).stdout
    state = lab.server_exec(["sh", "-c", f"cat {HOME}/.local/state/nbremote/slurm/*"], user=BOB)
    assert state.returncode != 0 and token not in state.stdout
    modes = lab.server_exec(["sh", "-c", "stat -c '%a %n' ~/.local/state/nbremote/slurm/*"], user=ALICE).stdout
    assert all(line.startswith("600 ") for line in modes.splitlines()), modes

    again = up_json(lab)  # reattach: the Slurm session is remembered for this host
    assert (again["reused"], again["job_id"], again["local_port"]) == (True, result["job_id"], result["local_port"])
    assert cluster.squeue() == [result["job_id"]]

    listed = lab.nbremote("ls", "server")
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1].split()
    assert row[:5] == [HOME, result["job_id"], "running", "on", NODE] and "1×a100" in row, listed.stdout
    assert "unlimited" in row and f"localhost:{result['local_port']}" in row

    down = lab.nbremote("down", "server")
    assert down.returncode == 0, down.stderr
    assert f"Slurm job {result['job_id']} ({HOME}) on server: cancelled" in down.stderr
    assert cluster.squeue() == []
    assert cluster.job_field(result["job_id"], "JobState") == "CANCELLED"


def read_until(stream, text: str, seconds: float) -> list[str]:
    """Lines of stream up to the one holding text; fails after `seconds` instead of hanging."""
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:
        for line in stream:
            lines.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(seconds), f"no {text!r} within {seconds} s: {lines}"
    return lines


def test_a_second_up_waits_while_the_gpu_is_taken_and_proceeds_when_it_is_free(lab, cluster):
    lab.server_exec(["mkdir", "-p", f"{HOME}/second"], user=ALICE)
    first = up_json(lab, "--slurm", "--gres=gpu:1")
    second = lab.nbremote_popen("up", "server", "--dir", "second", "--slurm", "--gres=gpu:1", "--no-browser",
                                "--detach", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Slurm may say "pending" once before it has a reason.
        seen = read_until(second.stderr, "pending (Resources)", 30)
        assert re.search(r"Slurm job \d+ pending \(Resources\): waiting for it to start", seen[-1]), seen
        assert len(cluster.squeue()) == 2
        time.sleep(1)
        assert second.poll() is None, "the second up must wait while its job is pending"
        down = lab.nbremote("down", "server")
        assert down.returncode == 0, down.stderr
        out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    job_id = re.search(rf"Slurm job (\d+) running on {NODE}", err).group(1)
    assert job_id != first["job_id"]
    assert cluster.squeue() == [job_id]
    url = out.strip()
    assert laptop_probe(lab, "status", url.split("/lab")[0], token_of(url))["with_token"] == 200
    listed = lab.nbremote("ls", "server")
    assert re.search(rf"{HOME}/second\s+{job_id}\s+running on {NODE}", listed.stdout), listed.stdout


def test_an_impossible_request_fails_fast_with_slurms_message_and_queues_nothing(lab, cluster):
    began = time.monotonic()
    done = lab.nbremote("up", "server", "--slurm", "--gres=gpu:2", "--no-browser", "--detach")
    assert done.returncode == 12, done.stderr
    assert time.monotonic() - began < 15
    assert "✗ Slurm refused the job: Requested node configuration is not available" in done.stderr
    assert cluster.squeue() == []
    assert lab.nbremote("ls", "server").stdout.strip() == "no Jupyter of nbremote's on server"


def test_a_job_that_ends_before_jupyter_is_ready_shows_its_output(lab, cluster):
    fake = f"{HOME}/broken-env"
    lab.server_exec(["sh", "-c", f"mkdir -p {fake}/bin && printf '#!/bin/sh\\necho jupyter cannot start: "
                     f"no GPU driver >&2\\nexit 3\\n' > {fake}/bin/jupyter-lab && chmod +x {fake}/bin/jupyter-lab"],
                    user=ALICE)
    done = lab.nbremote("up", "server", "--env", fake, "--slurm", "--time=5", "--no-browser", "--detach")
    assert done.returncode == 11, done.stderr
    assert re.search(r"✗ Slurm job \d+ ended \(failed\) before Jupyter was ready", done.stderr), done.stderr
    assert "jupyter cannot start: no GPU driver" in done.stderr
    assert cluster.squeue() == []


def test_run_output_reaches_logs_and_kill_cancels_the_job(lab, cluster):
    done = lab.nbremote("run", "server", "--slurm", "--gres=gpu:1 --time=10", "--name", "hello", "--",
                        "sh", "-c", "echo hello from $SLURM_JOB_ID on GPU $CUDA_VISIBLE_DEVICES; sleep 300")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"
    [job_id] = cluster.squeue()
    assert f"Slurm job {job_id}" in done.stderr
    assert wait_until(lambda: "hello from" in lab.nbremote("logs", "server", "hello").stdout, 30)
    assert lab.nbremote("logs", "server", "hello").stdout == f"hello from {job_id} on GPU 0\n"
    listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)["jobs"]
    assert [(j["name"], j["state"], j["slurm_job_id"], j["node"]) for j in listed] == \
        [("hello", "running", job_id, NODE)]

    killed = lab.nbremote("kill", "server", "hello")
    assert killed.returncode == 0, killed.stderr
    assert "job hello killed by SIGTERM" in killed.stderr
    assert cluster.squeue() == []
    assert cluster.job_field(job_id, "JobState") == "CANCELLED"
    listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)["jobs"]
    assert [(j["name"], j["state"]) for j in listed] == [("hello", "killed")]


def test_a_job_past_its_time_limit_is_reported(lab, cluster):
    # Slurm counts limits in minutes and checks them every 30 s: this test takes 1 to 1.5 min.
    up = lab.nbremote("up", "server", "--slurm", "--time=1", "--no-browser", "--detach", "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["time_left"] <= 60
    assert f"! Slurm job {result['job_id']} has only" in up.stderr
    listed = lab.nbremote("ls", "server")
    assert "save your work" in listed.stderr
    assert wait_until(lambda: cluster.squeue() == [], 120), cluster.logs()
    assert cluster.job_field(result["job_id"], "JobState") == "TIMEOUT"
    listed = lab.nbremote("ls", "server")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{result['job_id']}\s+ended: time limit reached", listed.stdout), listed.stdout
    assert f"Slurm job {result['job_id']} reached its time limit" in listed.stderr
