"""Jupyter and jobs on Slurm, end to end: the real CLI on the laptop, sshd on the
login node, and a real single-node Slurm (slurmctld, slurmd, munge) whose node
has one fake GPU, all in the server namespace (slurmlab.py)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time

import netlab
import pytest
from slurmlab import NODE, SlurmCluster
from test_resilience import _status_through
from test_up import laptop_probe, token_of, wait_until

from netlab import ALICE, BOB, LAPTOP_USER

HOME = f"/home/{ALICE}"
MOVED = "192.168.77.11"  # the laptop's address after it moved


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
    out = laptop_probe(
        lab,
        "run",
        base,
        token,
        "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'), os.environ.get('SLURM_JOB_ID'))",
    )
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
    # After the path line (`server via LAN …`) and the table's header.
    row = next(line for line in listed.stdout.splitlines() if line.startswith(HOME)).split()
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
    second = lab.nbremote_popen(
        "up",
        "server",
        "--dir",
        "second",
        "--slurm",
        "--gres=gpu:1",
        "--no-browser",
        "--detach",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
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
    assert lab.nbremote("ls", "server").stdout.splitlines()[-1] == "no Jupyter of nbremote's on server"


def test_a_job_that_ends_before_jupyter_is_ready_shows_its_output(lab, cluster):
    fake = f"{HOME}/broken-env"
    lab.server_exec(
        [
            "sh",
            "-c",
            f"mkdir -p {fake}/bin && printf '#!/bin/sh\\necho jupyter cannot start: "
            f"no GPU driver >&2\\nexit 3\\n' > {fake}/bin/jupyter-lab && chmod +x {fake}/bin/jupyter-lab",
        ],
        user=ALICE,
    )
    done = lab.nbremote("up", "server", "--env", fake, "--slurm", "--time=5", "--no-browser", "--detach")
    assert done.returncode == 11, done.stderr
    assert re.search(r"✗ Slurm job \d+ ended \(failed\) before Jupyter was ready", done.stderr), done.stderr
    assert "jupyter cannot start: no GPU driver" in done.stderr
    assert cluster.squeue() == []


def test_run_output_reaches_logs_and_kill_cancels_the_job(lab, cluster):
    done = lab.nbremote(
        "run",
        "server",
        "--slurm",
        "--gres=gpu:1 --time=10",
        "--name",
        "hello",
        "--",
        "sh",
        "-c",
        "echo hello from $SLURM_JOB_ID on GPU $CUDA_VISIBLE_DEVICES; sleep 300",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello"
    [job_id] = cluster.squeue()
    assert f"Slurm job {job_id}" in done.stderr
    assert wait_until(lambda: "hello from" in lab.nbremote("logs", "server", "hello").stdout, 30)
    assert lab.nbremote("logs", "server", "hello").stdout == f"hello from {job_id} on GPU 0\n"
    listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)["jobs"]
    assert [(j["name"], j["state"], j["slurm_job_id"], j["node"]) for j in listed] == [
        ("hello", "running", job_id, NODE)
    ]

    killed = lab.nbremote("kill", "server", "hello")
    assert killed.returncode == 0, killed.stderr
    assert "job hello killed by SIGTERM" in killed.stderr
    assert cluster.squeue() == []
    assert cluster.job_field(job_id, "JobState") == "CANCELLED"
    listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)["jobs"]
    assert [(j["name"], j["state"]) for j in listed] == [("hello", "killed")]


# --- the keeper of a Slurm session: the same resilience as on a plain host ----------------------

TICKS = f"{HOME}/ticks"
TICKER = (
    "import threading, time\n"
    "def tick():\n"
    "    for _ in range(180):\n"
    f"        with open({TICKS!r}, 'a') as f: f.write('%f\\n' % time.time())\n"
    "        time.sleep(1)\n"
    "threading.Thread(target=tick, daemon=True).start()\nprint('ticking')"
)


def _keeper_log(lab) -> str:
    path = lab.user(LAPTOP_USER).home / ".local" / "state" / "nbremote" / "keeper.log"
    return path.read_text() if path.exists() else ""


def _back(lab, result, seconds: float = 20) -> float:
    """Seconds until the tunnel answers again on the same local port."""
    began = time.monotonic()
    assert wait_until(lambda: _status_through(lab, result) == 200, seconds), _keeper_log(lab)
    return time.monotonic() - began


def _no_gap(since: float) -> None:
    with open(TICKS) as handle:
        ticks = [float(line) for line in handle.read().split() if float(line) >= since]
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 10 and max(gaps) < 1.5, max(gaps)


def _laptop_address(lab, old: str, new: str) -> None:
    """Renumber the laptop's end of the link (`ip -n` configures the namespace; no traffic leaves).
    The old address goes first: deleting a primary address takes its secondaries with it."""
    for verb, addr in (("del", old), ("add", new)):
        subprocess.run(
            ["ip", "-n", lab.laptop_ns, "addr", verb, f"{addr}/{netlab.LAB_PREFIX}", "dev", lab.link.ifname], check=True
        )


def test_slurm_30_s_outage_and_a_new_laptop_address_the_tunnel_returns_and_the_job_never_stopped(
    lab, cluster, lossy_link
):
    result = up_json(lab, "--slurm", "--time=10")  # --detach: the background keeper holds it
    token = token_of(result["url"])
    began = time.time()
    try:
        assert (
            laptop_probe(lab, "run", f"http://127.0.0.1:{result['local_port']}", token, TICKER)["stdout"].strip()
            == "ticking"
        )
        lossy_link.set_down(True)
        time.sleep(30)
        assert _status_through(lab, result) == 0, "the outage did not cut the tunnel"
        lossy_link.set_down(False)
        # About a second to notice plus one login; generous for two shared cores.
        assert _back(lab, result) < 8

        # The laptop comes back from a short outage with another address: the old connection
        # can never resume, and the keeper must log in again from the new one.
        lossy_link.set_down(True)
        _laptop_address(lab, netlab.LAPTOP_ADDR, MOVED)
        time.sleep(5)
        lossy_link.set_down(False)
        assert _back(lab, result) < 8
        assert lab.server_exec(["ss", "-tnH", "state", "established", "( sport = :22 )"]).stdout.count(MOVED), (
            "the new login does not come from the new address"
        )
        _no_gap(began)
        assert cluster.squeue() == [result["job_id"]]
        assert "reconnecting" in _keeper_log(lab) and "back" in _keeper_log(lab)
    finally:
        subprocess.run(["rm", "-f", TICKS], check=True)


def test_slurm_login_sshd_restart_the_keeper_reconnects(lab, cluster):
    result = up_json(lab, "--slurm", "--time=10")
    assert _status_through(lab, result) == 200
    lab.kill_sshd()  # the listener and every session
    assert lab.sshd_pid() is None
    lab.ensure_sshd()
    _back(lab, result)
    assert cluster.squeue() == [result["job_id"]]


def test_slurm_killed_client_and_up_again_reattaches_to_the_running_job(lab, cluster):
    client = lab.nbremote_popen(
        "up", "server", "--slurm", "--time=10", "--no-browser", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    url = client.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    [job_id] = cluster.squeue()
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    again = up_json(lab)
    assert (again["reused"], again["job_id"]) == (True, job_id)
    assert again["url"] == url  # the same port and token: open tabs carry on
    assert laptop_probe(lab, "status", url.split("/lab")[0], token_of(url))["with_token"] == 200
    assert cluster.squeue() == [job_id]


def test_a_job_past_its_time_limit_is_reported_by_up_and_ls_and_once_by_the_keeper_through_an_outage(
    lab, cluster, lossy_link
):
    # Slurm counts limits in minutes: one job serves what up, ls and the keeper each say of a time limit.
    up = lab.nbremote("up", "server", "--slurm", "--time=1", "--no-browser", "--detach", "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["time_left"] <= 60
    assert f"! Slurm job {result['job_id']} has only" in up.stderr
    listed = lab.nbremote("ls", "server")
    assert "save your work" in listed.stderr
    assert wait_until(lambda: lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-f", "nbremote.keeper"]).stdout)
    lossy_link.set_down(True)
    # slurmctld checks limits 30 s after it starts and every 30 s after that, so the check that
    # ends the job came anywhere up to 30 s past its limit. Restarted now, a few seconds into the
    # job, as an admin may restart it (the keeper, cut off, cannot see it), slurmctld takes the
    # job back from its state and ends it a few seconds past the limit: about 75 s in all.
    cluster.restart_controller()
    assert wait_until(lambda: cluster.squeue() == [], 120), cluster.logs()
    assert cluster.job_field(result["job_id"], "JobState") == "TIMEOUT"
    lossy_link.set_down(False)
    said = f"Slurm job {result['job_id']} reached its time limit"
    assert wait_until(lambda: said in _keeper_log(lab), 30), _keeper_log(lab)
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-f", "nbremote.keeper"]).stdout)
    assert _keeper_log(lab).count(said) == 1
    listed = lab.nbremote("ls", "server")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{result['job_id']}\s+ended: time limit reached", listed.stdout), listed.stdout
    assert said in listed.stderr
