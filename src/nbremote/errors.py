"""The one error type the core raises, and the exit codes the CLI turns it into."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    AUTH_FAILED = 4
    HOST_KEY = 5
    NO_PYTHON = 6
    AGENT_FAILED = 7
    NO_JUPYTER = 8
    REMOTE_DIR = 9
    PORT_BUSY = 10
    JUPYTER_FAILED = 11
    SLURM = 12
    NO_SUCH_JOB = 13
    CONFLICT = 14
    INTERRUPTED = 130


# What each code means, as the README, docs/troubleshooting.md and `nbremote --help` say it
# (tests/unit/test_exit_codes.py holds the three to this table).
MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.ERROR: "other error",
    ExitCode.USAGE: "bad usage",
    ExitCode.UNREACHABLE: "host unreachable",
    ExitCode.AUTH_FAILED: "login refused",
    ExitCode.HOST_KEY: "host key unknown or changed",
    ExitCode.NO_PYTHON: "no python3 on the server",
    ExitCode.AGENT_FAILED: "the agent failed",
    ExitCode.NO_JUPYTER: "no Jupyter (or no such environment)",
    ExitCode.REMOTE_DIR: "no such directory on the server",
    ExitCode.PORT_BUSY: "local port busy",
    ExitCode.JUPYTER_FAILED: "Jupyter failed to start",
    ExitCode.SLURM: "Slurm refused or ended the job (or has no commands there)",
    ExitCode.NO_SUCH_JOB: "no such job",
    ExitCode.CONFLICT: "already there (a job of that name, or another Jupyter in that directory)",
    ExitCode.INTERRUPTED: "interrupted",
}


def exit_code_table() -> str:
    """The codes as one sentence, as `nbremote --help` prints it."""
    return "; ".join(f"{int(code)} {meaning}" for code, meaning in MEANINGS.items())


class NbremoteError(Exception):
    """A failure to show the user: what happened, optional details, and what to do."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        exit_code: ExitCode = ExitCode.ERROR,
        details: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code
        self.details = details or []

    def to_json(self) -> dict[str, object]:
        return {
            "error": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
            "details": self.details,
        }
