"""Agent entry point: the bootstrap calls ``main`` once the modules are loaded."""
from __future__ import annotations

from __future__ import annotations

import sys

from . import jobs, jupyter, kernels, ports, protocol, slurm

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from .protocol import Handler

HANDLERS: dict[str, Handler] = {
    "up": jupyter.op_up,
    "down": jupyter.op_down,
    "ls": jupyter.op_ls,
    "run": jobs.op_run,
    "jobs": jobs.op_jobs,
    "logs": jobs.op_logs,
    "kill": jobs.op_kill,
    "status": jobs.op_status,
    "slurm_up": slurm.op_slurm_up,
    "slurm_down": slurm.op_slurm_down,
    "slurm_ls": slurm.op_slurm_ls,
    "kernel_check": kernels.op_kernel_check,
    "kernel_start": kernels.op_kernel_start,
    "kernel_signal": kernels.op_kernel_signal,
    "kernel_stop": kernels.op_kernel_stop,
    "listening": ports.op_listening,
    "port_check": ports.op_port_check,
}


def main(agent_hash: str, request: str) -> None:
    protocol.serve([request], sys.stdout, HANDLERS, agent_hash, stdin=sys.stdin)
