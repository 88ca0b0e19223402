"""The Slurm operations of the real agent on a host without Slurm: a clear error, nothing written."""

from __future__ import annotations

import pytest
from agentbox import VENV_BIN

from nbremote.errors import ExitCode, NbremoteError


@pytest.mark.parametrize(
    "op, args",
    [
        ("slurm_up", {"dir": "~"}),
        ("slurm_down", {"dir": "~"}),
        ("slurm_ls", {}),
        ("run", {"argv": ["true"], "slurm_options": []}),
    ],
)
def test_no_slurm_commands_is_a_clear_error(box, op, args):
    without_slurm = dict(box.env, PATH=str(VENV_BIN))  # python is there, sbatch and friends are not
    with pytest.raises(NbremoteError) as caught:
        box.call(op, args, environ=without_slurm)
    error = caught.value
    assert error.exit_code == ExitCode.SLURM
    assert error.message.startswith("no Slurm commands on this machine (sbatch, squeue, scontrol, scancel")
    assert "login node" in error.hint
    box.assert_nothing_left()
    assert not (box.agent_state / "slurm").exists()
    jobs = box.agent_state / "jobs"
    assert not jobs.exists() or list(jobs.iterdir()) == []
