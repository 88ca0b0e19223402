"""up --keep-output: started with the extension that keeps output, refused (with how to add it)
where the Jupyter lacks it, and never by quietly reusing a server that does not keep output."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from agentbox import VENV_BIN, cmdline

from nbremote.errors import ExitCode, NbremoteError

# scripts/test.sh makes it: JupyterLab, Notebook 7 and jupyter-server-nbmodel[lab] in a venv.
KEEP_VENV = Path("/opt/nbremote-lab/keep-output")
PACKAGE = shlex.quote("jupyter-server-nbmodel[lab]")


def _up_error(box, **kw) -> NbremoteError:
    with pytest.raises(NbremoteError) as caught:
        box.up(**kw)
    return caught.value


def _need_keep_venv() -> None:
    if not (KEEP_VENV / "bin" / "jupyter-lab").exists():
        if os.environ.get("NBREMOTE_REQUIRE_LAB") == "1":
            pytest.fail(f"NBREMOTE_REQUIRE_LAB=1 but {KEEP_VENV} is missing (scripts/test.sh makes it)")
        pytest.skip(f"{KEEP_VENV} is missing (scripts/test.sh makes it)")


def test_a_venv_without_the_extension_is_refused_with_its_own_pip(box):
    # The lab's venv has JupyterLab but not jupyter-server-nbmodel.
    error = _up_error(box, keep_output=True)
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert error.message == (
        f"the Jupyter at {VENV_BIN / 'jupyter-lab'} cannot keep output while no browser "
        "is attached: it lacks jupyter-server-nbmodel"
    )
    assert error.hint == f"on this machine run `{VENV_BIN.parent / 'bin' / 'pip'} install {PACKAGE}`"
    box.assert_nothing_left()


def test_a_system_jupyter_gets_a_venv_of_its_own_never_pip_user(box):
    # A Jupyter of the system Python (Debian's python3-notebook, a pip --user install): no
    # pyvenv.cfg, no conda-meta beside its bin/.
    bindir = box.root / "usr" / "bin"
    bindir.mkdir(parents=True)
    script = bindir / "jupyter-lab"
    script.write_text("#!/usr/bin/python3\nraise SystemExit('not run: the check comes first')\n")
    script.chmod(0o755)
    error = _up_error(box, keep_output=True, environ=dict(box.env, PATH=f"{bindir}:/usr/bin:/bin"))
    assert error.exit_code == ExitCode.NO_JUPYTER
    assert "--user" not in error.hint
    assert error.hint == (
        "on this machine make a venv with both: `python3 -m venv ~/jupyter-venv && "
        f"~/jupyter-venv/bin/pip install jupyterlab notebook {PACKAGE}`, then "
        "`up --env ~/jupyter-venv --keep-output`"
    )
    box.assert_nothing_left()


def test_a_conda_env_by_name_gets_conda_run(box):
    prefix = box.home / "miniconda3" / "envs" / "torch"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    (prefix / "bin" / "jupyter-lab").symlink_to(VENV_BIN / "jupyter-lab")
    error = _up_error(box, keep_output=True, env="torch")
    assert error.hint == f"on this machine run `conda run -n torch pip install {PACKAGE}`"
    box.assert_nothing_left()


@pytest.mark.slow
def test_started_with_the_extension_and_a_document_kept_until_the_server_stops(box):
    _need_keep_venv()
    reply, _ = box.up(keep_output=True, env=str(KEEP_VENV), timeout=90)
    server = reply["server"]
    assert server["keep_output"] is True
    # Not dropped 60 s after the last browser leaves: output printed later would be lost.
    assert "--YDocExtension.document_cleanup_delay=None" in cmdline(server["pid"])
    again, _ = box.up(keep_output=True, env=str(KEEP_VENV))
    assert again["reused"] is True and again["server"]["pid"] == server["pid"]
    box.down()
    box.assert_nothing_left()
    kept = box.agent_state / "keep-output"
    assert not kept.exists() or list(kept.iterdir()) == []
    assert not (box.work / ".jupyter_ystore.db").exists()


@pytest.mark.slow
def test_a_running_server_without_it_is_not_reused_for_keep_output(box):
    reply, _ = box.up()
    pid = reply["server"]["pid"]
    assert reply["server"]["keep_output"] is False
    error = _up_error(box, keep_output=True)
    assert error.exit_code == ExitCode.CONFLICT
    assert error.message == f"the Jupyter running in {os.path.realpath(box.work)} was started without --keep-output"
    assert "nbremote down" in error.hint
    # Nothing changed: the same server still answers.
    assert [r["pid"] for r in box.records()] == [pid]
    assert box.up()[0]["server"]["pid"] == pid
