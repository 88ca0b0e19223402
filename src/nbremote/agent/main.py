"""Agent entry point: the bootstrap calls ``main`` once the modules are loaded."""

from __future__ import annotations

import sys

from . import protocol

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from .protocol import Handler


# The module of each op's handler (handler_for imports it): the client ships an op only that
# module and the siblings it imports (agentlink.bundle), so the command line stays short.
OP_MODULES = {
    "up": "jupyter",
    "down": "jupyter",
    "ls": "jupyter",
    "run": "jobs",
    "jobs": "jobs",
    "logs": "jobs",
    "kill": "jobs",
    "status": "jobs",
    "slurm_up": "slurm",
    "slurm_down": "slurm",
    "slurm_ls": "slurm",
    "slurm_listen": "slurm",
    "kernel_check": "kernels",
    "kernel_start": "kernels",
    "kernel_signal": "kernels",
    "kernel_stop": "kernels",
    "listening": "ports",
    "port_check": "ports",
}


def handler_for(op: str) -> Handler | None:
    """The op's handler. Its module is compiled and imported only now: the agent travels as
    source, and a cold `up` waits on every millisecond before Jupyter's launch."""
    handlers: dict[str, Handler]
    if op in ("up", "down", "ls"):
        from . import jupyter

        handlers = {"up": jupyter.op_up, "down": jupyter.op_down, "ls": jupyter.op_ls}
    elif op in ("run", "jobs", "logs", "kill", "status"):
        from . import jobs

        handlers = {
            "run": jobs.op_run,
            "jobs": jobs.op_jobs,
            "logs": jobs.op_logs,
            "kill": jobs.op_kill,
            "status": jobs.op_status,
        }
    elif op in ("slurm_up", "slurm_down", "slurm_ls", "slurm_listen"):
        from . import slurm

        handlers = {
            "slurm_up": slurm.op_slurm_up,
            "slurm_down": slurm.op_slurm_down,
            "slurm_ls": slurm.op_slurm_ls,
            "slurm_listen": slurm.op_slurm_listen,
        }
    elif op in ("kernel_check", "kernel_start", "kernel_signal", "kernel_stop"):
        from . import kernels

        handlers = {
            "kernel_check": kernels.op_kernel_check,
            "kernel_start": kernels.op_kernel_start,
            "kernel_signal": kernels.op_kernel_signal,
            "kernel_stop": kernels.op_kernel_stop,
        }
    elif op in ("listening", "port_check"):
        from . import ports

        handlers = {"listening": ports.op_listening, "port_check": ports.op_port_check}
    else:
        return None
    return handlers[op]


def main(agent_hash: str, request: str) -> None:
    protocol.serve([request], sys.stdout, handler_for, agent_hash, stdin=sys.stdin)
