"""`nbremote up/ls/down` end to end: the real CLI in the laptop namespace, the
real sshd, tmux and JupyterLab in the server namespace."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import netlab
from netlab import ALICE, BOB, LAB_PYTHON, LAPTOP_USER, SERVER_ADDR

PROBE = (Path(__file__).with_name("jupyter_client_probe.py")).read_text()


def up_json(lab, *args: str) -> dict:
    done = lab.nbremote("up", *args, "--no-browser", "--detach", "--json", timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def token_of(url: str) -> str:
    return re.search(r"token=([A-Za-z0-9]+)", url).group(1)


def laptop_probe(lab, *args: str) -> dict:
    # The script goes in on stdin: the repo may sit where the laptop user cannot read.
    done = lab.laptop_exec([str(LAB_PYTHON), "-", *args], input=PROBE, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def alice_pids(lab, name: str) -> list[int]:
    # By process name: tmux's own command line also mentions jupyter-lab.
    done = lab.server_exec(["pgrep", "-u", ALICE, "-x", name])
    return [int(p) for p in done.stdout.split()]


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_up_gives_a_url_that_answers_only_with_its_token(lab):
    result = up_json(lab, "server")
    assert result["url"].startswith(f"http://127.0.0.1:{result['local_port']}/lab?token=")
    base = f"http://127.0.0.1:{result['local_port']}"
    assert laptop_probe(lab, "status", base, token_of(result["url"])) == {"with_token": 200, "without_token": 403}
    assert result["reused"] is False and result["launcher"] == "tmux"


def test_a_kernel_started_through_the_tunnel_runs_on_the_server(lab):
    result = up_json(lab, "server")
    code = (
        "import socket, getpass\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.connect(('{netlab.LAPTOP_ADDR}', 9))\n"
        "print(s.getsockname()[0], getpass.getuser())\n"
    )
    out = laptop_probe(lab, "run", f"http://127.0.0.1:{result['local_port']}", token_of(result["url"]), code)
    assert out["stdout"].split() == [SERVER_ADDR, ALICE]


def test_killed_client_leaves_jupyter_running_and_up_reattaches_then_down_cleans_up(lab):
    client = lab.nbremote_popen("up", "server", "--no-browser", stdout=subprocess.PIPE)
    url = client.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    first_pid = alice_pids(lab, "jupyter-lab")
    assert len(first_pid) == 1
    out = laptop_probe(lab, "run", url.split("/lab")[0], token_of(url), "x = 41 + 1; print(x)")
    assert out["stdout"].strip() == "42"

    os.killpg(client.pid, signal.SIGKILL)
    client.wait()
    assert alice_pids(lab, "jupyter-lab") == first_pid
    assert lab.server_exec(["pgrep", "-u", ALICE, "-f", "ipykernel_launcher"]).stdout.split(), (
        "the kernel died with the client"
    )

    again = up_json(lab, "server")
    assert again["reused"] is True and again["pid"] == first_pid[0]
    listed = json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"]
    assert [(s["pid"], s["kernels"], s["local_port"]) for s in listed] == [(first_pid[0], 1, again["local_port"])]

    down = lab.nbremote("down", "server", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["stopped"][0]["pid"] == first_pid[0]
    assert wait_until(lambda: not lab.server_exec(["pgrep", "-u", ALICE]).stdout.strip()), lab.server_exec(
        ["ps", "-u", ALICE, "-o", "pid,args"]
    ).stdout
    # Nothing of ours stays on the laptop either: no master, no forward.
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "ssh"]).stdout.strip())


def test_second_up_in_another_directory_gets_its_own_server(lab):
    lab.server_exec(["mkdir", "-p", "/home/nbr-alice/project"], user=ALICE)
    home = up_json(lab, "server")
    project = up_json(lab, "server", "--dir", "project")
    assert project["dir"] == "/home/nbr-alice/project" and home["dir"] == "/home/nbr-alice"
    assert project["pid"] != home["pid"] and project["local_port"] != home["local_port"]
    assert up_json(lab, "server", "--dir", "~/project")["pid"] == project["pid"]


def test_nothing_listens_beyond_loopback_and_the_token_stays_private(lab):
    result = up_json(lab, "server")
    token = token_of(result["url"])
    alice_uid = lab.user(ALICE).uid
    listeners = lab.server_exec(["ss", "-ltnpH"]).stdout.splitlines()
    ours = []
    for line in listeners:
        for pid in re.findall(r"pid=(\d+)", line):
            if os.stat(f"/proc/{pid}").st_uid == alice_uid:
                ours.append(line.split()[3])
    assert ours, listeners
    assert all(addr.startswith(("127.0.0.1:", "[::1]:")) for addr in ours), ours

    as_bob = lab.server_exec(["ps", "-eo", "args"], user=BOB).stdout
    assert "jupyter-lab" in as_bob and token not in as_bob
    environ = lab.server_exec(["cat", f"/proc/{result['pid']}/environ"], user=BOB)
    assert environ.returncode != 0
    state = lab.server_exec(["sh", "-c", "cat /home/nbr-alice/.local/state/nbremote/*/*"], user=BOB)
    assert state.returncode != 0 and token not in state.stdout
    tmux = lab.server_exec(["tmux", "list-panes", "-a", "-F", "#{pane_start_command}"], user=ALICE).stdout
    assert "jupyter-lab" in tmux and token not in tmux


def _port_open_on_laptop(lab, port: int) -> bool:
    done = lab.laptop_exec(
        [str(LAB_PYTHON), "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"]
    )
    return done.returncode == 0


def test_ctrl_c_removes_the_forward_and_leaves_the_notebook_running(lab):
    client = lab.nbremote_popen("up", "server", "--no-browser", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = client.stdout.readline().strip()
    port = int(re.search(r":(\d+)/", url).group(1))
    assert _port_open_on_laptop(lab, port)
    os.killpg(client.pid, signal.SIGINT)
    assert client.wait(timeout=15) == 0
    stderr = client.stderr.read()
    assert "the notebook keeps running on server. `nbremote down server` stops it." in stderr
    assert not _port_open_on_laptop(lab, port)
    assert alice_pids(lab, "jupyter-lab"), "Ctrl-C must not stop the remote Jupyter"
    # The master this run opened is closed too: nothing of ours stays on the laptop.
    assert wait_until(lambda: not lab.laptop_exec(["pgrep", "-u", LAPTOP_USER, "-x", "ssh"]).stdout.strip())


def test_up_again_over_the_live_master_keeps_the_local_port(lab):
    first = up_json(lab, "server")
    second = up_json(lab, "server")
    assert (second["reused"], second["pid"], second["local_port"]) == (True, first["pid"], first["local_port"])
    status = laptop_probe(lab, "status", f"http://127.0.0.1:{second['local_port']}", token_of(second["url"]))
    assert status["with_token"] == 200


def test_up_after_the_master_died_reattaches_to_the_same_jupyter(lab):
    first = up_json(lab, "server")
    lab.kill_user_processes(LAPTOP_USER)  # the master and its forward die; Jupyter must not
    second = up_json(lab, "server")
    assert (second["reused"], second["pid"], second["local_port"]) == (True, first["pid"], first["local_port"])


def test_up_over_a_live_master_shows_its_url_before_the_cli_is_imported(lab):
    """The master is up and the session remembered (its keeper stopped, as after a foreground
    `up` ended with the master kept): the console script reattaches before it imports the CLI,
    and prints what `up` prints, the URL a token-checked answer through the forward proves."""
    first = up_json(lab, "server")
    keeper = json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"][0]["keeper_pid"]
    lab.laptop_exec(["kill", str(keeper)])
    assert wait_until(lambda: not json.loads(lab.nbremote("ls", "server", "--json").stdout)["servers"][0]["keeper_pid"])
    spec = f"127.0.0.1:{first['local_port']}:127.0.0.1:{first['remote_port']}"
    for sock in Path(f"/tmp/nbremote-{lab.user(LAPTOP_USER).uid}").glob("*"):
        lab.laptop_exec(["ssh", "-o", f"ControlPath={sock}", "-O", "cancel", "-L", spec, "server"])
    # Python logs each import to stderr as it happens: the order of the lines is the order of events.
    done = lab.nbremote("up", "server", "--no-browser", "--detach", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"  {first['url']}\n"
    shown = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert re.fullmatch(
        rf"✓ Jupyter already running in {re.escape(first['dir'])} on server \(pid {first['pid']}\)  \d+\.\d\d s",
        shown[0],
    )
    assert shown[1:] == ["  the notebook keeps running; `nbremote down server` stops it."]
    lines = done.stderr.splitlines()
    click_at = next(i for i, line in enumerate(lines) if re.search(r"\|\s+click$", line))
    assert lines.index(shown[0]) < click_at
    status = laptop_probe(lab, "status", f"http://127.0.0.1:{first['local_port']}", token_of(first["url"]))
    assert status == {"with_token": 200, "without_token": 403}
