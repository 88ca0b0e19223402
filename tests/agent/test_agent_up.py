"""up / ls / down against a real JupyterLab: tmux and setsid launchers, reuse, stale records, secrecy."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from agentbox import VENV_BIN, AgentBox, api, children, cmdline, is_jupyter, pid_alive, wait_gone

from nbremote import remote
from nbremote.errors import ExitCode, NbremoteError
from nbremote.servers import parse_server


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One JupyterLab started through tmux, shared by the read-only checks below."""
    box = AgentBox(tmp_path_factory.mktemp("running"))
    try:
        reply, events = box.up()
        yield box, reply, events
    finally:
        box.cleanup()


def test_first_up_starts_jupyterlab_in_tmux(running):
    box, reply, events = running
    server = reply["server"]
    assert reply["reused"] is False and reply["replaced_pid"] is None
    assert server["launcher"] == "tmux"
    # The agent makes the token: requests travel on its command line, which `ps` shows.
    assert re.fullmatch(r"[0-9a-f]{48}", server["token"])
    assert server["dir"] == os.path.realpath(box.work)
    assert server["mode"] == "lab" and server["env"] is None
    assert server["tmux_session"] in box.tmux_sessions()
    assert pid_alive(server["pid"])
    # The client's own validation accepts what the agent really sends.
    info = parse_server(server, "this machine")
    assert (info.port, info.pid, info.token) == (server["port"], server["pid"], server["token"])


def test_starting_event_comes_first_and_names_the_port_and_token(running):
    _, reply, events = running
    assert [name for name, _ in events] == ["starting"]
    server = reply["server"]
    assert events[0][1] == {"port": server["port"], "pid": server["pid"], "launcher": "tmux", "token": server["token"]}


def test_api_needs_the_token(running):
    _, reply, _ = running
    port = reply["server"]["port"]
    assert api(port, "/api/status", reply["server"]["token"])[0] == 200
    assert api(port, "/api/status")[0] == 403
    assert api(port, "/api/status", "b" * 48)[0] == 403


def test_listens_on_loopback_only(running):
    _, reply, _ = running
    assert "--ip=127.0.0.1" in cmdline(reply["server"]["pid"])


def test_token_is_in_no_command_line_environment_or_log(running):
    box, reply, _ = running
    pid, port, token = reply["server"]["pid"], reply["server"]["port"], reply["server"]["token"]
    everything = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    assert f"--port={port}" in everything, "ps must show our Jupyter for this check to mean anything"
    assert token not in everything
    panes = box.tmux("list-panes", "-a", "-F", "#{pane_pid} #{pane_start_command}").stdout
    assert f"{pid} " in panes and "jupyter-lab" in panes
    assert token not in panes
    assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    log = (box.agent_state / "logs").glob("*.log")
    text = "".join(p.read_text() for p in log)
    assert "Jupyter Server" in text
    assert token not in text


def test_state_is_private(running):
    box, _, _ = running
    folder = box.agent_state
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.parent.name for p in files} >= {"servers", "tokens", "logs"}
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {mode:o}"


def test_up_again_reuses_the_server(running):
    box, reply, _ = running
    again, events = box.up()
    assert again["reused"] is True
    assert again["server"]["pid"] == reply["server"]["pid"]
    assert again["server"]["token"] == reply["server"]["token"], "the running server's token"
    assert events == []


def test_up_with_another_env_refuses_to_replace_it(running):
    box, reply, _ = running
    with pytest.raises(NbremoteError) as caught:
        box.up(env=str(VENV_BIN.parent))
    assert caught.value.exit_code == ExitCode.CONFLICT
    assert caught.value.message == f"a Jupyter from the login PATH is already running in {os.path.realpath(box.work)}"
    assert "nbremote down" in caught.value.hint
    assert pid_alive(reply["server"]["pid"])


def test_ls_reports_it_running(running):
    box, reply, _ = running
    servers = box.call("ls", {})["servers"]
    assert [(s["pid"], s["running"], s["kernels"]) for s in servers] == [(reply["server"]["pid"], True, 0)]


def _kernel_pid(jupyter_pid: int) -> int:
    kernels = [p for p in children(jupyter_pid) if "ipykernel" in cmdline(p)]
    assert len(kernels) == 1, [cmdline(p) for p in children(jupyter_pid)]
    return kernels[0]


@pytest.mark.slow
def test_down_stops_jupyter_its_kernels_and_tmux(box, monkeypatch):
    # Through ThisMachine, as `nbremote up` without a host calls it.
    for name, value in box.env.items():
        monkeypatch.setenv(name, value)
    agent = remote.ThisMachine().agent(hello_timeout=30)
    reply = agent.request("up", {"dir": str(box.work), "mode": "lab", "timeout": 60})
    pid, port = reply["server"]["pid"], reply["server"]["port"]
    status, kernel = api(port, "/api/kernels", reply["server"]["token"], method="POST")
    assert status == 201, kernel
    kernel_pid = _kernel_pid(pid)
    runtime_file = box.runtime_dir() / f"jpserver-{pid}.json"
    assert runtime_file.exists()

    stopped = remote.ThisMachine().agent(hello_timeout=30).request("down", {"dir": str(box.work)})

    assert stopped == {"stopped": [{"dir": os.path.realpath(box.work), "pid": pid}]}
    assert wait_gone([pid, kernel_pid], 5)
    assert not runtime_file.exists()
    assert not list(box.runtime_dir().glob("jpserver-*"))
    box.assert_nothing_left()
    assert box.call("ls", {}) == {"servers": []}
    assert box.down() == {"stopped": []}, "a second down finds nothing to stop"


@pytest.mark.slow
def test_setsid_when_there_is_no_tmux(box):
    # Only the venv on PATH: python and jupyter, but no tmux.
    env = dict(box.env, PATH=str(VENV_BIN))
    reply, events = box.up(environ=env)
    pid = reply["server"]["pid"]
    assert reply["server"]["launcher"] == "setsid"
    assert reply["server"]["tmux_session"] is None
    assert events[0][1]["launcher"] == "setsid"
    assert os.getsid(pid) == pid, "Jupyter leads a session of its own, so it outlives the agent"
    assert api(reply["server"]["port"], "/api/status", reply["server"]["token"])[0] == 200
    assert box.tmux_sessions() == []
    assert box.call("down", {"dir": str(box.work)}, environ=env)["stopped"][0]["pid"] == pid
    assert wait_gone([pid], 5)
    box.assert_nothing_left()


@pytest.mark.slow
def test_a_killed_jupyter_is_replaced(box):
    first, _ = box.up()
    old = first["server"]["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old], 5)
    assert (box.runtime_dir() / f"jpserver-{old}.json").exists(), "a killed Jupyter leaves its runtime file"

    second, events = box.up()

    new = second["server"]["pid"]
    assert [name for name, _ in events] == ["stale", "starting"]
    assert events[0][1] == {"pid": old}
    assert second["reused"] is False and second["replaced_pid"] == old
    assert new != old and pid_alive(new)
    assert api(second["server"]["port"], "/api/status", second["server"]["token"])[0] == 200
    assert not (box.runtime_dir() / f"jpserver-{old}.json").exists()
    assert [r["pid"] for r in box.records()] == [new]


@pytest.mark.slow
def test_two_ups_at_once_give_one_server(box):
    results: list[object] = [None, None]

    def up(i: int) -> None:
        try:
            results[i] = box.up()[0]
        except BaseException as exc:  # noqa: BLE001 (reported below)
            results[i] = exc

    threads = [threading.Thread(target=up, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(isinstance(r, dict) for r in results), results
    assert results[0]["server"]["pid"] == results[1]["server"]["pid"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert len(box.records()) == 1
    jupyters = [p for p in box.processes() if is_jupyter(p)]
    assert jupyters == [results[0]["server"]["pid"]]


@pytest.mark.slow
def test_down_never_signals_a_recorded_pid_that_is_not_our_jupyter(box):
    # After a reboot the recorded pid may be someone else's process: simulate that by pointing the record at one.
    reply, _ = box.up()
    jupyter = reply["server"]["pid"]
    os.kill(jupyter, signal.SIGKILL)
    assert wait_gone([jupyter], 5)
    decoy = subprocess.Popen(["sleep", "60"], env=box.env)
    try:
        record_path = next((box.agent_state / "servers").glob("*.json"))
        record = json.loads(record_path.read_text())
        record_path.write_text(json.dumps({**record, "pid": decoy.pid}))

        assert box.down()["stopped"] == [{"dir": os.path.realpath(box.work), "pid": decoy.pid}]

        assert decoy.poll() is None, "the unrelated process must survive"
        assert box.records() == []
    finally:
        decoy.kill()
        decoy.wait()
