"""The jobs agent on this machine: run, jobs, logs, kill, with tmux and with setsid."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
import time

import subprocess

import pytest

from nbremote.errors import NbremoteError
from nbremote.remote import ThisMachine


TMUX = shutil.which("tmux")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private HOME, XDG dirs and tmux server: the jobs never touch the real ones."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("TMUX_TMPDIR", str(tmp_path))
    monkeypatch.delenv("TMUX", raising=False)
    yield home
    if TMUX:
        subprocess.run([TMUX, "kill-server"], capture_output=True, env={"TMUX_TMPDIR": str(tmp_path)})


@pytest.fixture
def agent():
    def call(op: str, args: dict | None = None, on_event=None, timeout: float = 60) -> dict:
        return ThisMachine().agent(hello_timeout=30).request(op, args or {}, on_event=on_event, timeout=timeout)

    return call


AWKWARD = ["a b", "it's", 'say "hi"', "$HOME", "a;b", "line1\nline2", "naïve ☃", "", "*", "\\n"]
ARGV_JSON = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


@pytest.fixture(params=["tmux", "setsid"])
def launcher(request, monkeypatch):
    if request.param == "setsid":
        # No tmux on the PATH the agent sees: it must fall back to setsid.
        folder = os.path.dirname(sys.executable)
        monkeypatch.setenv("PATH", f"{folder}:/nonexistent")
    elif TMUX is None:
        pytest.skip("no tmux here")
    return request.param


def wait_state(agent, name: str, wanted: str, seconds: float = 15) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        job = next(j for j in agent("jobs")["jobs"] if j["name"] == name)
        if job["state"] == wanted or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def read_log(agent, name: str, **args) -> bytes:
    chunks = []
    agent(
        "logs",
        {"name": name, **args},
        on_event=lambda event, data: chunks.append(base64.b64decode(data["data"])) if event == "chunk" else None,
    )
    return b"".join(chunks)


def test_argv_reaches_the_command_byte_for_byte(agent, launcher):
    job = agent("run", {"argv": ARGV_JSON + AWKWARD, "name": "quoting"})["job"]
    assert job["launcher"] == launcher
    assert wait_state(agent, "quoting", "exited")["exit_code"] == 0
    assert json.loads(read_log(agent, "quoting")) == AWKWARD


def test_exit_code_and_every_line_are_kept(agent, launcher, isolated):
    script = "import sys\nfor i in range(5): print('line', i)\nsys.exit(3)"
    agent("run", {"argv": [sys.executable, "-c", script], "name": "fails", "dir": str(isolated)})
    job = wait_state(agent, "fails", "exited")
    assert (job["exit_code"], job["dir"]) == (3, str(isolated))
    assert read_log(agent, "fails").decode().splitlines() == [f"line {i}" for i in range(5)]
    assert read_log(agent, "fails", tail=2).decode().splitlines() == ["line 3", "line 4"]


def test_kill_ends_the_job_and_its_children_and_says_killed(agent, launcher):
    # The child names its own pid, so the check cannot be fooled by another sleep on the machine.
    script = (
        "import subprocess, time; child = subprocess.Popen(['/bin/sleep', '300']); "
        "print('up', child.pid, flush=True); time.sleep(300)"
    )
    agent("run", {"argv": [sys.executable, "-c", script], "name": "sleepy"})
    assert wait_state(agent, "sleepy", "running")["state"] == "running"
    deadline = time.monotonic() + 10
    while b"up" not in read_log(agent, "sleepy") and time.monotonic() < deadline:
        time.sleep(0.1)
    child_pid = int(read_log(agent, "sleepy").split()[1])
    reply = agent("kill", {"name": "sleepy"})
    assert reply["signalled"] is True and reply["job"]["state"] == "killed"
    assert reply["job"]["exit_code"] == -15
    # The wrapper writes the exit status just before it exits itself.
    assert _gone(lambda: _alive(reply["job"]["pid"]))
    assert _gone(lambda: _alive(child_pid)), "the job's child survived"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _gone(still_there, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while still_there():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_follow_streams_until_the_job_ends(agent, launcher):
    script = "import time\nfor i in range(4):\n print(i, flush=True)\n time.sleep(0.3)"
    agent("run", {"argv": [sys.executable, "-c", script], "name": "ticker"})
    data = read_log(agent, "ticker", follow=True)
    assert data.decode().split() == ["0", "1", "2", "3"]


def test_a_missing_program_exits_127_with_the_reason_in_the_log(agent, launcher):
    agent("run", {"argv": ["/nonexistent/program"], "name": "missing"})
    assert wait_state(agent, "missing", "exited")["exit_code"] == 127
    assert b"cannot run /nonexistent/program" in read_log(agent, "missing")


def test_names_are_generated_unique_and_a_taken_name_is_refused(agent):
    first = agent("run", {"argv": ["true"]})["job"]["name"]
    second = agent("run", {"argv": ["true"]})["job"]["name"]
    assert (first, second) == ("true-1", "true-2")
    wait_state(agent, "true-1", "exited")
    with pytest.raises(NbremoteError, match="a job named true-1 already exists"):
        agent("run", {"argv": ["true"], "name": "true-1"})


@pytest.mark.parametrize("name", ["../x", ".hidden", "a" * 65, "a b", "x.end"])
def test_bad_names_are_refused_by_the_agent_too(agent, name, isolated):
    with pytest.raises(NbremoteError, match="is not valid"):
        agent("run", {"argv": ["true"], "name": name})


def test_prune_forgets_finished_jobs_and_purge_removes_their_logs(agent, isolated):
    agent("run", {"argv": ["true"], "name": "done"})
    agent("run", {"argv": ["/bin/sleep", "30"], "name": "busy"})
    wait_state(agent, "done", "exited")
    folder = isolated.parent / "state" / "nbremote" / "jobs"
    assert agent("jobs", {"prune": True})["pruned"] == ["done"]
    assert (folder / "done.log").exists() and not (folder / "done.json").exists()
    agent("kill", {"name": "busy"})
    agent("jobs", {"prune": True, "purge": True})
    assert sorted(os.listdir(folder)) == ["done.log"]


def test_state_files_are_private(agent, isolated):
    agent("run", {"argv": ["true"], "name": "private"})
    wait_state(agent, "private", "exited")
    folder = isolated.parent / "state" / "nbremote" / "jobs"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for entry in folder.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry.name


def test_status_without_a_gpu_says_so(agent, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + ":/usr/bin:/bin")
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    reply = agent("status")
    assert reply["gpu"] == {"available": False, "reason": "no nvidia-smi", "gpus": [], "apps": []}
    assert reply["machine"]["cpus"] >= 1 and reply["machine"]["memory"]["total"] > 0


def test_no_such_job_is_one_error_with_one_exit_code_for_attach_logs_and_kill():
    from nbremote import jobs
    from nbremote.console import Console
    from nbremote.errors import ExitCode

    calls = {
        "attach": lambda: jobs.attach_argv(host=None, name="nope", timeout=30, interactive=False),
        "logs": lambda: jobs.logs(
            host=None,
            name="nope",
            tail=None,
            follow=False,
            write=lambda b: None,
            console=Console(json_mode=True),
            timeout=30,
        ),
        "kill": lambda: jobs.kill(host=None, name="nope", signal_name="TERM", timeout=30),
    }
    seen = {}
    for command, call in calls.items():
        with pytest.raises(NbremoteError) as caught:
            call()
        seen[command] = (caught.value.exit_code, caught.value.message, caught.value.hint)
    assert set(seen.values()) == {
        (ExitCode.NO_SUCH_JOB, "no job named nope on this machine", "`nbremote jobs` lists the jobs there")
    }, seen


def test_a_taken_name_is_a_conflict_not_an_agent_failure(agent):
    from nbremote import jobs
    from nbremote.errors import ExitCode

    agent("run", {"argv": ["sleep", "30"], "name": "twice"})
    with pytest.raises(NbremoteError) as caught:
        jobs.run(host=None, argv=["true"], name="twice", directory="~", env=None, timeout=30)
    assert caught.value.exit_code == ExitCode.CONFLICT
    assert caught.value.message == "a job named twice is running on this machine"
    agent("kill", {"name": "twice", "signal_name": "KILL"})
    with pytest.raises(NbremoteError) as caught:
        jobs.run(host=None, argv=["true"], name="twice", directory="~", env=None, timeout=30)
    assert caught.value.exit_code == ExitCode.CONFLICT
    assert caught.value.hint == "pick another --name, or forget finished jobs with `nbremote jobs --prune`"
