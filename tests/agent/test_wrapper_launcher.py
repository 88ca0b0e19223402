"""The job wrapper and the Slurm launcher alone: each is run the way the agent runs it, as
`python3 -c SOURCE ...` in a Python of its own, or its parts called directly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nbremote.agent import launcher, wrapper
from nbremote.agent.protocol import module_source


def _job(tmp_path: Path, argv: list[str]) -> Path:
    path = tmp_path / "demo.json"
    path.write_text(
        json.dumps(
            {
                "argv": argv,
                "dir": str(tmp_path),
                "env": {"PATH": os.environ["PATH"], "ONLY": "1"},
                "log": str(tmp_path / "demo.log"),
            }
        )
    )
    return path


def _wrap(job: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", module_source("wrapper"), str(job)], stdin=subprocess.DEVNULL, start_new_session=True
    )


def test_the_wrapper_logs_the_output_and_writes_the_exit_code(tmp_path):
    job = _job(tmp_path, ["sh", "-c", 'echo "out $ONLY"; echo err >&2; exit 3'])
    assert _wrap(job).wait(timeout=20) == 0
    end = json.loads((tmp_path / "demo.end.json").read_text())
    assert end["exit_code"] == 3 and end["ended"] <= time.time()
    assert (tmp_path / "demo.log").read_text() == "out 1\nerr\n"
    assert (tmp_path / "demo.end.json").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "demo.end.json.tmp").exists()


def test_a_command_that_cannot_start_ends_with_127_and_says_why(tmp_path):
    job = _job(tmp_path, [str(tmp_path / "no-such-program")])
    assert _wrap(job).wait(timeout=20) == 127
    end = json.loads((tmp_path / "demo.end.json").read_text())
    assert end["exit_code"] == 127 and end["error"] == "No such file or directory"
    assert "nbremote: cannot run" in (tmp_path / "demo.log").read_text()


def test_the_wrapper_forwards_a_signal_to_the_commands_group(tmp_path):
    job = _job(tmp_path, ["sh", "-c", "echo started; sleep 30 & wait"])
    proc = _wrap(job)
    deadline = time.monotonic() + 10
    while "started" not in ((tmp_path / "demo.log").read_text() if (tmp_path / "demo.log").exists() else ""):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert json.loads((tmp_path / "demo.end.json").read_text())["exit_code"] == -signal.SIGTERM


def test_the_wrapper_passes_the_panes_terminal_variables_only():
    job = {"env": {"A": "1", "TERM": "dumb"}}
    assert wrapper.environment(job, {"TMUX": "/tmp/t,1,0", "TERM": "screen", "HOME": "/x"}) == {
        "A": "1",
        "TERM": "screen",
        "TMUX": "/tmp/t,1,0",
    }
    assert wrapper.end_path("/s/jobs/a.b.json") == "/s/jobs/a.b.end.json"


def test_the_launcher_gives_jupyter_no_token_on_its_command_line():
    argv = launcher.jupyter_argv("/env/bin/jupyter-lab", "/home/a", "10.1.2.3", 8123, ["--allow-root"])
    assert argv == [
        "/env/bin/jupyter-lab",
        "--no-browser",
        "--ip=10.1.2.3",
        "--port=8123",
        "--ServerApp.port_retries=0",
        "--ServerApp.root_dir=/home/a",
        "--allow-root",
    ]
    assert not any("token" in a.lower() for a in argv)


def test_the_launcher_falls_back_to_the_node_name_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert launcher.node_address("node7") == "node7"


def test_the_launcher_writes_ready_private_and_whole(tmp_path):
    ready = str(tmp_path / "k.ready")
    launcher.write_ready(ready, {"port": 1})
    assert json.loads(Path(ready).read_text()) == {"port": 1}
    assert os.stat(ready).st_mode & 0o777 == 0o600 and not os.path.exists(ready + ".tmp")


def test_a_port_nothing_answers_on_is_not_jupyter():
    port = launcher.free_port("127.0.0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))  # free again once the probe is closed
    assert launcher.answers("127.0.0.1", port, "token") is False
