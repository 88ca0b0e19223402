"""`nbremote run/jobs/logs/kill` end to end: jobs on the lab server outlive the laptop's client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

from netlab import ALICE

from test_up import wait_until

AWKWARD = [
    "a b",
    "it's",
    'say "hi"',
    "$HOME",
    "`id`",
    "a;b",
    "x|y&z",
    "line1\nline2",
    "naïve ☃ 日本",
    "",
    "*",
    "\\n",
    "--json",
    "-",
]
TICKER = "import time\nfor i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(1)"


def jobs_json(lab, host: str = "server") -> dict:
    done = lab.nbremote("jobs", host, "--json")
    assert done.returncode == 0, done.stderr
    return {j["name"]: j for j in json.loads(done.stdout)["jobs"]}


def test_job_outlives_a_killed_client_and_logs_show_every_line(lab):
    client = lab.nbremote_popen(
        "run",
        "server",
        "--name",
        "ticker",
        "--follow",
        "--",
        "python3",
        "-c",
        TICKER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdout.readline().strip() == "ticker"  # the name comes at once
    assert client.stdout.readline().strip() == "tick 0"
    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    assert jobs_json(lab)["ticker"]["state"] == "running"
    assert wait_until(lambda: jobs_json(lab)["ticker"]["state"] == "exited", 15)
    job = jobs_json(lab)["ticker"]
    assert job["exit_code"] == 0 and job["argv"] == ["python3", "-c", TICKER] and job["dir"] == "/home/nbr-alice"
    done = lab.nbremote("logs", "server", "ticker")
    assert done.stdout.splitlines() == [f"tick {i}" for i in range(6)]
    assert lab.nbremote("logs", "server", "ticker", "--tail", "2").stdout.splitlines() == ["tick 4", "tick 5"]


def test_ctrl_c_in_follow_detaches_and_the_job_goes_on(lab):
    client = lab.nbremote_popen(
        "run",
        "server",
        "--name",
        "detach",
        "--follow",
        "--",
        "python3",
        "-c",
        TICKER,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdout.readline().strip() == "detach"
    assert client.stdout.readline().strip() == "tick 0"
    os.killpg(client.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    _, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert "detached; job detach keeps running on server" in err
    assert jobs_json(lab)["detach"]["state"] == "running"
    assert wait_until(lambda: jobs_json(lab)["detach"]["state"] == "exited", 15)
    assert lab.nbremote("logs", "server", "detach").stdout.splitlines() == [f"tick {i}" for i in range(6)]


def test_follow_streams_to_the_end_and_reports_the_exit(lab):
    script = "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\nsys.exit(4)"
    done = lab.nbremote("run", "server", "--name", "fails", "--follow", "--", "python3", "-c", script, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["fails", "0", "1", "2"]
    assert "job fails exited 4 after" in done.stderr
    assert jobs_json(lab)["fails"]["exit_code"] == 4


def test_arguments_reach_the_server_byte_for_byte(lab):
    echo = "import json, sys; print(json.dumps(sys.argv[1:]))"
    done = lab.nbremote("run", "server", "--name", "quoting", "--", "python3", "-c", echo, *AWKWARD)
    assert done.returncode == 0, done.stderr
    assert wait_until(lambda: jobs_json(lab)["quoting"]["state"] == "exited")
    assert json.loads(lab.nbremote("logs", "server", "quoting").stdout) == AWKWARD
    assert jobs_json(lab)["quoting"]["argv"][3:] == AWKWARD


def test_kill_ends_the_job_and_jobs_says_killed(lab):
    done = lab.nbremote("run", "server", "--name", "sleeper", "--", "sleep", "300")
    assert done.returncode == 0, done.stderr
    assert jobs_json(lab)["sleeper"]["state"] == "running"
    killed = lab.nbremote("kill", "server", "sleeper")
    assert killed.returncode == 0, killed.stderr
    assert "job sleeper killed by SIGTERM" in killed.stderr
    job = jobs_json(lab)["sleeper"]
    assert (job["state"], job["signal"], job["exit_code"]) == ("killed", "TERM", -15)
    assert wait_until(lambda: not lab.server_exec(["pgrep", "-u", ALICE, "-x", "sleep"]).stdout.strip())
    listing = lab.nbremote("jobs", "server").stdout
    assert "sleeper" in listing and "killed by SIGTERM" in listing


def test_prune_forgets_finished_jobs_keeping_their_logs_unless_purge(lab):
    lab.nbremote("run", "server", "--name", "quick", "--", "true")
    assert wait_until(lambda: jobs_json(lab)["quick"]["state"] == "exited")
    done = lab.nbremote("jobs", "server", "--prune")
    assert "forgot quick" in done.stderr
    assert jobs_json(lab) == {}
    folder = lab.user(ALICE).home / ".local/state/nbremote/jobs"
    assert (folder / "quick.log").exists()
    lab.nbremote("run", "server", "--name", "quick2", "--", "true")
    assert wait_until(lambda: jobs_json(lab)["quick2"]["state"] == "exited")
    done = lab.nbremote("jobs", "server", "--prune", "--purge")
    assert "forgot quick2 and its log" in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["quick.log"]


def test_unknown_job_and_taken_name(lab):
    for command in ("attach", "logs", "kill"):
        done = lab.nbremote(command, "server", "nope")
        assert done.returncode == 13, (command, done.stderr)
        assert "✗ no job named nope on server\n  hint: `nbremote jobs server` lists the jobs there" in done.stderr
    # The hint runs as printed.
    hint = re.search(r"hint: `nbremote (.*?)`", done.stderr).group(1).split()
    assert lab.nbremote(*hint).returncode == 0
    lab.nbremote("run", "server", "--name", "twice", "--", "sleep", "30")
    again = lab.nbremote("run", "server", "--name", "twice", "--", "true")
    assert again.returncode == 14 and "a job named twice is running on server" in again.stderr


def test_follow_survives_a_dropped_connection_without_repeating_a_line(lab):
    lab.nbremote("run", "server", "--name", "long", "--", "python3", "-c", TICKER)
    client = lab.nbremote_popen("logs", "server", "long", "-f", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert client.stdout.readline().strip() == "tick 0"
    # Every sshd session of alice's goes: the client's ssh dies mid-stream.
    lab.server_exec(["pkill", "-KILL", "-u", ALICE, "-x", "sshd"])
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert ["tick 0"] + out.splitlines() == [f"tick {i}" for i in range(6)]
    assert "reconnecting" in err and "reconnected to server" in err


def test_attach_without_a_terminal_or_to_a_finished_job_says_why(lab):
    lab.nbremote("run", "server", "--name", "brief", "--", "true")
    assert wait_until(lambda: jobs_json(lab)["brief"]["state"] == "exited")
    done = lab.nbremote("attach", "server", "brief")
    assert done.returncode == 1 and "job brief is no longer running (exited)" in done.stderr


def test_attach_runs_tmux_attach_over_ssh_with_a_terminal(lab):
    lab.nbremote("run", "server", "--name", "shell", "--", "sleep", "60")
    # `script` gives the client a terminal; tmux draws the pane, we detach at once.
    attach = " ".join(lab.nbremote_argv("attach", "server", "shell"))
    # The keys wait until tmux holds the terminal, and stdin stays open until it has read them.
    shell = f"(sleep 3; printf '\\002d'; sleep 3) | script -qec '{attach}' /dev/null"
    done = lab.laptop_exec(["sh", "-c", shell], env=lab.nbremote_env({"TERM": "xterm"}), timeout=30)
    assert "[detached (from session nbremote-job-shell)]" in done.stdout, done.stdout + done.stderr
    assert jobs_json(lab)["shell"]["state"] == "running"
