"""`nbremote status` end to end: GPUs through a stand-in nvidia-smi serving real
captures, a server without one, and three hosts of which one is dead."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from netlab import ALICE

from test_up_errors import appended

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"
STAND_IN = """#!/bin/sh
# Stand-in for nvidia-smi: replays real captures for the two queries nbremote makes.
case "$*" in
  *--query-gpu=*) exec cat "$(dirname "$0")/gpu.csv" ;;
  *--query-compute-apps=*) exec cat "$(dirname "$0")/apps.csv" ;;
esac
echo "stand-in nvidia-smi: unexpected arguments: $*" >&2
exit 2
"""


@contextmanager
def nvidia_smi(lab, gpu_csv: str, apps_csv: str):
    alice = lab.user(ALICE)
    folder = alice.home / "fake-nvidia"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(STAND_IN)
    shutil.copy(FIXTURES / gpu_csv, folder / "gpu.csv")
    shutil.copy(FIXTURES / apps_csv, folder / "apps.csv")
    os.chmod(folder / "nvidia-smi", 0o755)
    for path in (folder, *folder.iterdir()):
        os.chown(path, alice.uid, alice.gid)
    try:
        with appended(alice.home / ".profile", f'\nPATH="{folder}:$PATH"\n', alice):
            yield
    finally:
        shutil.rmtree(folder)


def status_json(lab, *hosts: str, timeout: str = "5") -> list[dict]:
    done = lab.nbremote("status", *hosts, "--json", "--timeout", timeout, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["hosts"]


def test_eight_gpus_are_listed_with_their_load(lab):
    with nvidia_smi(lab, "v100x8.query-gpu.csv", "l40s-idle.compute-apps.csv"):
        [host] = status_json(lab, "server")
        text = lab.nbremote("status", "server").stdout
    assert host["reachable"] is True and host["path"] == "192.168.77.2:22" and host["rtt_ms"] > 0
    assert host["kind"] == "LAN" and text.startswith("server  via LAN 192.168.77.2:22 ")
    gpus = host["gpu"]["gpus"]
    assert len(gpus) == 8 and gpus[6]["utilization"] == 100 and gpus[6]["memory_used_mib"] == 13928
    assert "  GPU6 Tesla V100-SXM2-32GB  100%  13.6/32.0 GB  51°C" in text.splitlines()


def test_a_gpu_in_an_error_state_is_shown_as_such(lab):
    with nvidia_smi(lab, "reset-required.query-gpu.csv", "l40s-idle.compute-apps.csv"):
        text = lab.nbremote("status", "server").stdout
    assert "  GPU0 ?  error: GPU requires reset" in text.splitlines()


def test_the_gpu_process_list_names_the_processes(lab):
    with nvidia_smi(lab, "l40s-load.query-gpu.csv", "l40s-load.compute-apps.csv"):
        text = lab.nbremote("status", "server").stdout
    assert (
        "  GPU0 NVIDIA L40S    9%  1.2/45.0 GB  54°C  ffmpeg (pid 20037, 0.5 GB), ffmpeg (pid 20038, 0.7 GB)"
        in text.splitlines()
    )


def test_a_server_without_nvidia_smi_says_so_plainly(lab):
    done = lab.nbremote("status", "server-bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "  no GPU (no nvidia-smi)"


def test_status_shows_jobs_and_jupyter(lab):
    lab.nbremote("run", "server", "--name", "trainer", "--", "sleep", "60")
    assert lab.nbremote("up", "server", "--no-browser", "--detach", timeout=120).returncode == 0
    [host] = status_json(lab, "server")
    assert [j["name"] for j in host["jobs"]] == ["trainer"] and host["jobs"][0]["state"] == "running"
    assert [s["dir"] for s in host["servers"]] == ["/home/nbr-alice"]
    text = lab.nbremote("status", "server").stdout
    assert "  Jupyter  /home/nbr-alice  :" in text and "  jobs     trainer  running" in text


def test_gpu_memory_of_a_job_and_of_jupyter_is_theirs(lab):
    from test_up import wait_until

    with nvidia_smi(lab, "l40s-load.query-gpu.csv", "l40s-idle.compute-apps.csv"):
        assert lab.nbremote("run", "server", "--name", "trainer", "--", "sleep", "61").returncode == 0
        assert lab.nbremote("up", "server", "--no-browser", "--detach", timeout=120).returncode == 0
        assert wait_until(lambda: lab.server_exec(["pgrep", "-u", ALICE, "-f", "^sleep 61$"]).stdout.strip())
        job_pid = int(lab.server_exec(["pgrep", "-u", ALICE, "-f", "^sleep 61$"]).stdout.split()[0])
        [host] = status_json(lab, "server")
        jupyter_pid = host["servers"][0]["pid"]
        # The real process list, its two ffmpeg pids replaced by the job's and Jupyter's.
        apps = lab.user(ALICE).home / "fake-nvidia" / "apps.csv"
        capture = (FIXTURES / "l40s-load.compute-apps.csv").read_text()
        apps.write_text(capture.replace(", 20037,", f", {job_pid},").replace(", 20038,", f", {jupyter_pid},"))
        listed = json.loads(lab.nbremote("jobs", "server", "--json").stdout)
        table = lab.nbremote("jobs", "server").stdout.splitlines()
        text = lab.nbremote("status", "server").stdout
    assert listed["gpu"] is True and listed["jobs"][0]["gpu_memory_mib"] == 538
    assert table[0].split()[-2:] == ["GPU", "MEM"] and table[1].endswith("0.5 GB")
    assert (
        f"  GPU0 NVIDIA L40S    9%  1.2/45.0 GB  54°C  job trainer (pid {job_pid}, 0.5 GB), "
        f"Jupyter in /home/nbr-alice (pid {jupyter_pid}, 0.7 GB)"
    ) in text.splitlines()


def test_a_driver_that_does_not_answer_is_no_gpu_with_its_reason(lab):
    message = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running."
    )
    with nvidia_smi(lab, "l40s-load.query-gpu.csv", "l40s-idle.compute-apps.csv"):
        (lab.user(ALICE).home / "fake-nvidia" / "nvidia-smi").write_text(f'#!/bin/sh\necho "{message}"\nexit 9\n')
        done = lab.nbremote("status", "server")
        jobs = lab.nbremote("jobs", "server", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"  no GPU: {message}"
    assert json.loads(jobs.stdout)["gpu"] is False


def test_three_hosts_one_dead_costs_the_timeout_not_the_sum(lab):
    started = time.monotonic()
    hosts = status_json(lab, "server", "server-bob", "ssh://nbr-alice@192.168.77.99", timeout="3")
    elapsed = time.monotonic() - started
    assert [h["reachable"] for h in hosts] == [True, True, False]
    assert hosts[2]["error"].startswith("cannot reach ssh://nbr-alice@192.168.77.99 at 192.168.77.99:22")
    assert elapsed < 3 + 4, elapsed
    text = lab.nbremote("status", "server", "ssh://nbr-alice@192.168.77.99", "--timeout", "2").stdout
    assert "ssh://nbr-alice@192.168.77.99  unreachable: cannot reach" in text


@pytest.mark.parametrize("hosts", [("server",), ("server", "server-bob")])
def test_status_leaves_no_ssh_master_behind(lab, hosts):
    from test_up import wait_until
    from netlab import LAPTOP_USER

    assert lab.nbremote("status", *hosts).returncode == 0
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip())


# Serves the 8×V100 capture with every row moved one GPU along per call, so the busy
# GPU (row 6: 100 %, 13928 MiB) is GPU6 on the first refresh, GPU7 on the second, GPU0 on the third.
ROTATING = """#!/bin/sh
folder="$(dirname "$0")"
case "$*" in
  *--query-gpu=*)
    n=$(cat "$folder/calls" 2>/dev/null || echo 0)
    echo $((n + 1)) > "$folder/calls"
    exec awk -v shift="$n" 'BEGIN { FS = OFS = ", " } NR > 1 { $1 = ($1 + shift) % 8 } { print }' "$folder/gpu.csv" ;;
  *--query-compute-apps=*) exec cat "$folder/apps.csv" ;;
esac
exit 2
"""


def _frames(raw: bytes, footer: str) -> list[list[str]]:
    """The screens `status --watch` drew on the terminal, each as plain lines."""
    text = re.sub(r"\x1b\[\d*[A-Za-z]", "", raw.decode("utf-8", "replace")).replace("\r", "")
    frames, current = [], []
    for line in text.split("\n"):
        if line.strip() == footer:
            frames.append(current)
            current = []
        elif line:
            current.append(line)
    return frames


def _sparks(frame: list[str], gpu: int) -> tuple[str, str]:
    [line] = [line for line in frame if line.startswith(f"  GPU{gpu} ")]
    match = re.search(r"  util (\S*) *  mem (\S*) *$", line)
    assert match, line
    return match.group(1), match.group(2)


def test_watch_redraws_in_place_with_a_growing_gpu_history_and_stops_on_ctrl_c(lab):
    from test_up import wait_until
    from netlab import LAPTOP_USER

    with nvidia_smi(lab, "v100x8.query-gpu.csv", "l40s-idle.compute-apps.csv"):
        folder = lab.user(ALICE).home / "fake-nvidia"
        (folder / "nvidia-smi").write_text(ROTATING)
        controller, terminal = os.openpty()
        try:
            client = lab.nbremote_popen(
                "status",
                "server",
                "--watch",
                "--interval",
                "0.5",
                stdout=terminal,
                stderr=terminal,
                env={"TERM": "xterm"},
            )
            os.close(terminal)
            raw = b""
            footer = "every 0.5 s · Ctrl-C stops"
            deadline = time.monotonic() + 60
            while len(_frames(raw, footer)) < 4 and time.monotonic() < deadline:
                ready, _, _ = select.select([controller], [], [], 1)
                if ready:
                    raw += os.read(controller, 65536)
            frames = _frames(raw, footer)
            assert len(frames) >= 4, raw.decode("utf-8", "replace")
            os.killpg(client.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            assert client.wait(timeout=30) in (0, 130)
        finally:
            os.close(controller)
    # Redrawn in place: every screen after the first starts by moving up over the last one.
    assert raw.count(b"\x1b[") > 0 and len(re.findall(rb"\x1b\[\d+F", raw)) >= 3
    # The history grows by one sample per refresh and follows the busy GPU around.
    assert [_sparks(f, 6)[0] for f in frames[:4]] == ["█", "█▁", "█▁▁", "█▁▁▁"]
    assert [_sparks(f, 7)[0] for f in frames[:4]] == ["▁", "▁█", "▁█▁", "▁█▁▁"]
    assert _sparks(frames[3], 0) == ("▁▁█▁", "▁▁▄▁")  # 13928 of 32768 MiB is 43 %
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip())
