"""A logger for the client's modules that imports `logging` only when a record can be seen.

`logging` (with traceback, warnings and their own imports) is the largest single import of
`up HOST` before its login. Until something imports it, nothing can have configured it: the
root logger is at WARNING with no handlers, so debug and info records are dropped, and a
warning or error reaches Python's last-resort handler on stderr; that is what this logger
does then. Once `logging` is imported (-v/--debug, the keeper, a library), every call goes to
`logging.getLogger(name)` as before.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import logging


class Logger:
    def __init__(self, name: str):
        self.name = name

    def _logger(self) -> logging.Logger:
        import logging

        return logging.getLogger(self.name)

    def debug(self, msg: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._logger().debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._logger().info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        self._logger().warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        self._logger().error(msg, *args, stacklevel=2)


def get(name: str) -> Logger:
    return Logger(name)


def log_steps() -> None:
    """-v and --debug: each step to stderr, on a clock from the process's start (logging's
    clock starts when it is imported: the console script calls this before its other imports)."""
    import logging

    logging.basicConfig(
        level=logging.DEBUG, stream=sys.stderr, format="[%(relativeCreated)7.0f ms] %(name)s: %(message)s"
    )
