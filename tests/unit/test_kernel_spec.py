"""Kernel specs on the laptop and the proxy's end-to-end probe, without a server."""

from __future__ import annotations

import json
import socket
import sys
import threading

import pytest

from nbremote import kernels
from nbremote.errors import ExitCode, NbremoteError

from clirun import run_main


@pytest.fixture(autouse=True)
def data_dir(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    return tmp_path / "jupyter"


def _write_spec(host: str, env: str | None) -> None:
    path = kernels.data_dir() / "kernels" / kernels.spec_name(host, env)
    path.mkdir(parents=True)
    (path / "kernel.json").write_text(json.dumps(kernels._spec_document(host, env)))


@pytest.mark.parametrize(
    "host, env, name",
    [
        ("gpubox", None, "nbremote-gpubox"),
        ("me@GPU.example.org", None, "nbremote-me-gpu.example.org"),
    ],
)
def test_spec_names_are_what_jupyter_accepts(host, env, name):
    assert kernels.spec_name(host, env) == name


def test_two_environments_get_two_specs():
    a, b = kernels.spec_name("gpubox", "~/venvs/ml"), kernels.spec_name("gpubox", "/opt/venvs/ml")
    assert a != b and a.startswith("nbremote-gpubox-ml-") and b.startswith("nbremote-gpubox-ml-")


def test_the_spec_runs_this_python_with_the_connection_file():
    doc = kernels._spec_document("gpubox", "torch")
    assert doc["argv"] == [sys.executable, "-m", "nbremote.kernels", "gpubox", "torch", "{connection_file}"]
    assert doc["interrupt_mode"] == "signal" and doc["language"] == "python"


def test_ls_and_remove(data_dir):
    _write_spec("gpubox", None)
    _write_spec("gpubox", "torch")
    (data_dir / "kernels" / "python3").mkdir()  # not ours: never listed, never removed
    assert [(s.host, s.env) for s in kernels.installed()] == [("gpubox", None), ("gpubox", "torch")]
    removed = kernels.remove(host="gpubox", env="torch")
    assert not removed.path.exists()
    assert [(s.host, s.env) for s in kernels.installed()] == [("gpubox", None)]
    assert (data_dir / "kernels" / "python3").is_dir()


def test_removing_what_is_not_installed_changes_nothing(capsys, nothing_runs, data_dir):
    _write_spec("gpubox", None)
    code, out, err = run_main(capsys, "kernels", "remove", "gpubox", "--env", "torch")
    assert code == ExitCode.USAGE
    assert err.splitlines()[:2] == [
        "✗ no nbremote kernel for gpubox with --env torch is installed",
        "  hint: `nbremote kernels ls` lists them",
    ]
    assert [s.name for s in kernels.installed()] == ["nbremote-gpubox"]


@pytest.mark.parametrize(
    "args, named",
    [
        (["kernels", "install", "a b"], "'a b' is not a host"),
        (["kernels", "install", "--", "-oProxyCommand=x"], "'-oProxyCommand=x' is not a host"),
        (["kernels", "install", "gpubox", "--env", "x\ty"], "environment 'x\\ty' is not valid"),
        (["kernels", "install"], "Missing argument 'HOST'"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(capsys, nothing_runs, data_dir, args, named):
    code, out, err = run_main(capsys, *args)
    assert code == ExitCode.USAGE
    assert named in err
    assert not (data_dir / "kernels").exists()


def test_install_needs_a_host():
    with pytest.raises(NbremoteError) as caught:
        kernels.install(host="", env=None, timeout=5, interactive=False)
    assert caught.value.message == "kernels install needs a HOST: a kernel on this machine needs no nbremote"


def _server(behaviour: str) -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        conn, _ = listener.accept()
        if behaviour == "greet":
            conn.sendall(b"\xff")
        if behaviour != "silent":
            conn.close()
        else:
            threading.Event().wait(5)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


@pytest.mark.parametrize("behaviour, seen", [("greet", "ok"), ("close", "gone"), ("silent", "lost")])
def test_the_probe_tells_a_kernel_from_a_closed_port_and_a_dead_path(behaviour, seen):
    assert kernels.hb_probe(_server(behaviour), timeout=0.5) == seen


def test_nothing_listening_is_a_lost_forward():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert kernels.hb_probe(port, timeout=0.5) == "lost"
