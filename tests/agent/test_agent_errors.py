"""What up reports when it cannot start Jupyter, and that it leaves nothing behind each time."""

from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest
from agentbox import VENV_BIN

from nbremote.errors import ExitCode, NbremoteError


def _up_error(box, **kw) -> NbremoteError:
    with pytest.raises(NbremoteError) as caught:
        box.up(**kw)
    return caught.value


def test_missing_directory(box):
    missing = box.home / "no" / "such"
    error = _up_error(box, directory=missing)
    assert error.exit_code == ExitCode.REMOTE_DIR
    assert error.message == f"no directory {missing} on this machine"
    assert "--dir" in error.hint
    box.assert_nothing_left()


def test_relative_directory_is_under_home(box):
    error = _up_error(box, directory="not-there")
    assert error.message == f"no directory {os.path.realpath(box.home)}/not-there on this machine"


def test_env_path_that_does_not_exist(box):
    missing = box.root / "envs" / "nope"
    error = _up_error(box, env=str(missing))
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == f"no environment at {missing} on this machine"
    assert "venv" in error.hint
    box.assert_nothing_left()


def test_conda_env_name_that_does_not_exist(box):
    error = _up_error(box, env="nbremote-test-no-such-env")
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == 'no conda environment "nbremote-test-no-such-env" on this machine'
    assert "conda env list" in error.hint
    box.assert_nothing_left()


@pytest.mark.parametrize("mode, package", [("lab", "jupyterlab"), ("notebook", "notebook")])
def test_env_without_jupyter(box, mode, package):
    env = box.root / "emptyenv"
    (env / "bin").mkdir(parents=True)
    error = _up_error(box, env=str(env), mode=mode)
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == f"no Jupyter in the environment at {env}"
    assert f"{env}/bin/pip install {package}" in error.hint
    box.assert_nothing_left()


@pytest.mark.parametrize(
    "mode, what, package", [("lab", "JupyterLab", "jupyterlab"), ("notebook", "Jupyter Notebook", "notebook")]
)
def test_no_jupyter_on_the_path(box, mode, what, package):
    # The agent still runs (its python is named by absolute path), but jupyter is nowhere on PATH.
    environ = dict(box.env, PATH="/usr/bin:/bin")
    assert not any(os.path.exists(os.path.join(d, f"jupyter-{mode}")) for d in ("/usr/bin", "/bin"))
    error = _up_error(box, environ=environ, mode=mode)
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == f"no {what} on the login PATH of this machine"
    assert f"~/.venvs/jupyter/bin/pip install {package}`" in error.hint
    assert error.hint.endswith("then pass `--env '~/.venvs/jupyter'`")
    box.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs the system python3")
def test_the_install_hint_works_under_pep_668(box, tmp_path):
    """The hint, run as printed by the system python3 (PEP 668's externally managed one on
    Debian 12), makes a venv whose pip installs JupyterLab; `pip install --user` is refused there.

    pip resolves against PyPI with --dry-run: the same resolution, without the 200 MB install.
    """
    error = _up_error(box, environ=dict(box.env, PATH="/usr/bin:/bin"), mode="lab")
    command = re.search(r"`(python3 -m venv .*?)`", error.hint).group(1)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        ["bash", "-c", command.replace("pip install", "pip install --dry-run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Would install" in done.stdout and "jupyterlab-" in done.stdout
    assert (tmp_path / ".venvs" / "jupyter" / "bin" / "python").exists()
    if glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED"):
        old = subprocess.run(
            ["python3", "-m", "pip", "install", "--user", "--dry-run", "jupyterlab"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert old.returncode != 0


@pytest.mark.slow
def test_jupyter_in_home_local_bin_is_found(box):
    # `pip install --user` puts it in ~/.local/bin, often missing from a non-login PATH.
    local_bin = box.home / ".local" / "bin"
    local_bin.mkdir(parents=True)
    (local_bin / "jupyter-lab").symlink_to(VENV_BIN / "jupyter-lab")
    environ = dict(box.env, PATH="/usr/bin:/bin")
    error = _up_error(box, environ=environ, mode="notebook")
    assert error.exit_code == ExitCode.NO_JUPYTER, "only jupyter-lab is there, not jupyter-notebook"
    reply, _ = box.up(environ=environ, timeout=60)
    assert reply["server"]["pid"] > 0
    box.down()
    box.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.parametrize("launcher, path", [("tmux", None), ("setsid", str(VENV_BIN))])
def test_jupyter_that_exits_during_start_up(box, launcher, path):
    # A real user config that makes Jupyter itself fail: proves the user's config is read, too.
    config = box.home / ".jupyter"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text("c.ServerApp.certfile = '/nonexistent/cert.pem'\n")
    environ = dict(box.env, PATH=path) if path else None
    events = []
    with pytest.raises(NbremoteError) as caught:
        box.call("up", {"dir": str(box.work), "timeout": 60}, environ=environ, on_event=lambda *e: events.append(e))
    error = caught.value
    assert error.exit_code == ExitCode.JUPYTER_FAILED
    assert error.message == "Jupyter exited during start-up"
    assert [(name, data["launcher"]) for name, data in events] == [("starting", launcher)]
    assert any('certfile "/nonexistent/cert.pem" does not exist' in line for line in error.details), error.details
    logs = list((box.agent_state / "logs").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in error.hint, "the log is kept and named"
    box.assert_nothing_left()


@pytest.mark.parametrize(
    "args, message",
    [
        ({"mode": "classic"}, "mode must be one of lab, notebook"),
        ({"token": "t" * 48}, "malformed request: op_up() got an unexpected keyword argument 'token'"),
        ({"surprise": 1}, "malformed request: op_up() got an unexpected keyword argument 'surprise'"),
    ],
)
def test_bad_requests_are_refused(box, args, message):
    error = _up_error(box, **args)
    assert error.exit_code == ExitCode.AGENT_FAILED
    assert error.message == message
    box.assert_nothing_left()
