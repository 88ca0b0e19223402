"""Which runner a command or a remembered session uses (runner.py says what a runner is)."""

from __future__ import annotations

from nbremote import slurm
from nbremote.onhost import HostRunner
from nbremote.runner import uses_slurm
from nbremote.sessions import SessionRecord

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.runner import Runner


def for_up(host: str | None, slurm_text: str | None) -> Runner:
    """Slurm when --slurm is given, the profile names it, or a Slurm session there is remembered;
    its batch options are the profile's with those of --slurm replacing the same names."""
    if uses_slurm(host, slurm_text):
        return slurm.SlurmRunner(slurm.options_for(host, slurm_text), slurm.node_login_for(host))
    return HostRunner()


def for_host(host: str | None) -> Runner:
    """The runner of `down` and `ls`, which submit nothing."""
    return slurm.SlurmRunner() if uses_slurm(host, None) else HostRunner()


def for_record(record: SessionRecord) -> Runner:
    return slurm.SlurmRunner() if record.runner == slurm.SlurmRunner.name else HostRunner()
