"""The remote side never depends on the SSH session, and the tunnel comes back
by itself: outages with real packet loss, sshd restarts, concurrent `up`s."""

from __future__ import annotations

import json
import subprocess
import time

import netlab
from netlab import ALICE

from test_up import alice_pids, laptop_probe, token_of, up_json, wait_until

TICKS = "/home/nbr-alice/ticks"


def _status_through(lab, result) -> int:
    done = lab.laptop_exec(
        [
            str(netlab.LAB_PYTHON),
            "-c",
            "import sys, urllib.request\n"
            "r = urllib.request.Request(sys.argv[1], headers={'Authorization': 'token ' + sys.argv[2]})\n"
            "print(urllib.request.urlopen(r, timeout=2).status)",
            f"http://127.0.0.1:{result['local_port']}/api/status",
            token_of(result["url"]),
        ]
    )
    return int(done.stdout) if done.returncode == 0 else 0


def test_30_s_outage_tunnel_returns_on_the_same_port_and_the_kernel_never_stopped(lab, lossy_link):
    result = up_json(lab, "server")  # --detach: the background keeper watches the tunnel
    base = f"http://127.0.0.1:{result['local_port']}"
    code = (
        "import threading, time\n"
        "def tick():\n"
        "    for _ in range(120):\n"
        f"        with open({TICKS!r}, 'a') as f: f.write('%f\\n' % time.time())\n"
        "        time.sleep(1)\n"
        "threading.Thread(target=tick, daemon=True).start()\nprint('ticking')"
    )
    try:
        assert laptop_probe(lab, "run", base, token_of(result["url"]), code)["stdout"].strip() == "ticking"
        lossy_link.set_down(True)
        time.sleep(30)
        assert _status_through(lab, result) == 0, "the outage did not cut the tunnel"
        lossy_link.set_down(False)
        back = time.monotonic()
        assert wait_until(lambda: _status_through(lab, result) == 200, 20), "the tunnel did not come back"
        recovered = time.monotonic() - back
        # About a second to notice plus one login; generous for two shared cores.
        assert recovered < 8, recovered
        ticks = [float(line) for line in open(TICKS).read().split()]
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert len(ticks) >= 30 and max(gaps) < 1.5, max(gaps)
    finally:
        subprocess.run(["rm", "-f", TICKS])


def test_sshd_restart_on_the_server_reconnects_by_itself(lab):
    result = up_json(lab, "server")
    assert _status_through(lab, result) == 200
    lab.kill_sshd()  # the listener and every session
    assert lab.sshd_pid() is None
    lab.ensure_sshd()
    keeper_log = lab.user(netlab.LAPTOP_USER).home / ".local" / "state" / "nbremote" / "keeper.log"
    assert wait_until(lambda: _status_through(lab, result) == 200, 20), (
        keeper_log.read_text() if keeper_log.exists() else "no keeper log"
    )
    assert alice_pids(lab, "jupyter-lab") == [result["pid"]]


def test_two_concurrent_ups_for_one_directory_make_one_server(lab):
    clients = [
        lab.nbremote_popen(
            "up", "server", "--no-browser", "--detach", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = []
    for client in clients:
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        results.append(json.loads(out))
    assert results[0]["pid"] == results[1]["pid"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert alice_pids(lab, "jupyter-lab") == [results[0]["pid"]]


def test_killed_jupyter_is_replaced_and_reported(lab):
    first = up_json(lab, "server")
    lab.server_exec(["kill", "-KILL", str(first["pid"])])
    done = lab.nbremote("up", "server", "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert f"the Jupyter nbremote started earlier (pid {first['pid']}) had stopped" in done.stderr
    assert second["replaced_pid"] == first["pid"] and second["pid"] != first["pid"]
    assert alice_pids(lab, "jupyter-lab") == [second["pid"]]


def test_down_stops_the_keeper_and_leaves_no_process_on_either_side(lab):
    result = up_json(lab, "server")
    assert wait_until(lambda: lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER, "-f", "nbremote.keeper"]).stdout)
    assert json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"][0]["keeper_pid"]
    assert lab.nbremote("down", "server").returncode == 0
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER]).stdout.strip())
    assert wait_until(lambda: not lab.server_exec(["pgrep", "-u", ALICE]).stdout.strip())
    assert result["pid"] not in alice_pids(lab, "jupyter-lab")


def test_a_cold_up_of_a_detached_session_replaces_its_keeper_instead_of_racing_it(lab):
    """The masters ended under a detached session: its keeper would log in again while this
    `up` does, and its clean-up would end the master `up` just opened (seen at 100 ms)."""
    up_json(lab, "server")

    def keeper() -> int | None:
        return json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"][0]["keeper_pid"]

    assert wait_until(keeper)
    first = keeper()
    masters = lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER, "-x", "ssh"]).stdout.split()
    lab.laptop_exec(["kill", "-TERM", *masters])
    result = up_json(lab, "server")
    assert wait_until(lambda: keeper() not in (None, first)), "the old keeper was left running"
    keepers = lab.laptop_exec(["pgrep", "-u", netlab.LAPTOP_USER, "-f", "nbremote.keeper"]).stdout.split()
    assert keepers == [str(keeper())]
    processes = lab.laptop_exec(["pgrep", "-a", "-u", netlab.LAPTOP_USER, "-x", "ssh"]).stdout
    assert len([line for line in processes.splitlines() if " -N -f " in line]) == 1, processes  # one master
    assert _status_through(lab, result) == 200
