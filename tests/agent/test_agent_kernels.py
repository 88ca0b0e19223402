"""The agent's side of `nbremote kernels`: an ipykernel on loopback ports with the laptop's key,
reached here directly with jupyter_client (the laptop reaches it through ssh forwards)."""

from __future__ import annotations

import json
import os
import queue

import pytest
from agentbox import VENV_BIN, pid_alive, wait_gone

from nbremote.errors import ExitCode, NbremoteError

KEY = "0f" * 16
CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


def _error(box, op, args) -> NbremoteError:
    with pytest.raises(NbremoteError) as caught:
        box.call(op, args)
    return caught.value


def _client(ports: dict, key: str = KEY):
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient()
    client.load_connection_info(
        dict(ports, ip="127.0.0.1", transport="tcp", key=key.encode(), signature_scheme="hmac-sha256")
    )
    client.start_channels()
    return client


def _run(client, code: str) -> str:
    out = []
    client.execute_interactive(code, timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
    return "".join(out)


def _iopub_until(client, msg_id: str, msg_type: str, state: str | None = None) -> None:
    while True:
        msg = client.get_iopub_msg(timeout=20)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == msg_type
            and (state is None or msg["content"].get("execution_state") == state)
        ):
            return


def test_check_names_the_python_that_will_run_kernels(box):
    assert box.call("kernel_check", {"env": str(VENV_BIN.parent)})["python"] == str(VENV_BIN / "python3")


def test_a_python_without_ipykernel_is_refused_with_the_pip_line(box):
    env = box.root / "bare"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python3").symlink_to("/usr/bin/python3")  # Debian's, without ipykernel
    error = _error(box, "kernel_check", {"env": str(env)})
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == f"no ipykernel in the environment {env} on this machine"
    assert error.hint == (
        f"on this machine run `{env}/bin/python3 -m pip install ipykernel` "
        "(in a venv or conda environment, not the system Python)"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ({"key": ""}, "key and signature_scheme (hmac-sha256) are required"),
        ({"key": KEY, "signature_scheme": "md5"}, "key and signature_scheme (hmac-sha256) are required"),
    ],
)
def test_start_needs_a_key_and_a_known_scheme(box, args, message):
    error = _error(box, "kernel_start", args)
    assert error.message == message
    assert not (box.agent_state / "kernels").exists() or not list((box.agent_state / "kernels").iterdir())


@pytest.mark.slow
def test_a_kernel_runs_with_the_laptops_key_is_interrupted_and_stopped(box):
    started = box.call("kernel_start", {"key": KEY, "env": str(VENV_BIN.parent)})
    pid, ports = started["pid"], started["ports"]
    assert sorted(ports) == sorted(CHANNELS)
    connection = box.agent_state / "kernels" / f"{started['id']}.json"
    assert oct(connection.stat().st_mode & 0o777) == "0o600"
    assert json.loads(connection.read_text())["key"] == KEY
    assert KEY not in open(f"/proc/{pid}/cmdline").read()  # only in the 0600 file
    client = _client(ports)
    try:
        assert _run(client, "import os; x = 41; print(os.getpid())").strip() == str(pid)
        # Interrupt: a long sleep ends in KeyboardInterrupt, and the kernel keeps its state.
        sleeping = client.execute("import time; time.sleep(60)")
        _iopub_until(client, sleeping, "execute_input")  # the sleep has begun
        assert box.call("kernel_signal", {"id": started["id"], "pid": pid})["alive"] is True
        reply = client.get_shell_msg(timeout=20)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        _iopub_until(client, sleeping, "status", "idle")
        assert _run(client, "print(x + 1)") == "42\n"
    finally:
        client.stop_channels()
    assert box.call("kernel_stop", {"id": started["id"], "pid": pid})["stopped"] is True
    assert wait_gone([pid], 5) and not connection.exists()


@pytest.mark.slow
def test_a_wrong_key_gets_no_answer_and_stop_leaves_other_processes_alone(box):
    started = box.call("kernel_start", {"key": KEY, "env": str(VENV_BIN.parent)})
    client = _client(started["ports"], key="ab" * 16)
    try:
        client.execute("print(1)")
        with pytest.raises(queue.Empty):  # the kernel drops unsigned messages
            client.get_shell_msg(timeout=3)
    finally:
        client.stop_channels()
    # A pid that is not this kernel's (here: our own) is never signalled.
    assert box.call("kernel_stop", {"id": started["id"], "pid": os.getpid()})["stopped"] is False
    assert pid_alive(started["pid"])
    box.call("kernel_stop", {"id": started["id"], "pid": started["pid"]})
    assert wait_gone([started["pid"]], 5)
