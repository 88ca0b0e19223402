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
    INTERRUPTED = 130


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
