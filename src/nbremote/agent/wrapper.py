"""The job wrapper, run as `python3 -c SOURCE JOBFILE` by jobs.py (in tmux when there is one).

Stdlib only and self-contained: it runs in a Python of its own, where the agent's other modules
are not loaded. It starts the command of JOBFILE with the log as its output, forwards the signals
it gets to the command's process group (what `kill` sends), and writes NAME.end.json atomically
once the command ends. In tmux the command gets the pane as its terminal and the foreground, so
Ctrl-C in `attach` reaches it, and the log is copied to the pane for an attached user to see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

TYPE_CHECKING = False  # typing's import would cost the job's start; mypy reads these alone
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
COPY_POLL = 0.2


def end_path(job_path: str) -> str:
    return job_path[: -len(".json")] + ".end.json"


def finish(job_path: str, doc: dict[str, Any]) -> None:
    end = end_path(job_path)
    tmp = end + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, end)


def environment(job: dict[str, Any], outer: Mapping[str, str]) -> dict[str, str]:
    """The job's environment, with the terminal's variables of the pane it runs in."""
    env: dict[str, str] = dict(job["env"])
    for key in ("TMUX", "TMUX_PANE", "TERM"):
        if key in outer:
            env[key] = outer[key]
    return env


def _take_foreground(tty: bool) -> Callable[[], None]:
    def pre() -> None:
        os.setpgrp()
        if tty:
            # Taking the terminal from the background raises SIGTTOU, which would stop us.
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, os.getpgrp())
            except OSError:
                pass
            signal.signal(signal.SIGTTOU, signal.SIG_DFL)

    return pre


def run(job_path: str) -> int | None:
    with open(job_path) as handle:
        job = json.load(handle)
    tty = os.isatty(0)
    log = open(job["log"], "ab", 0)
    try:
        child = subprocess.Popen(
            job["argv"],
            cwd=job["dir"],
            env=environment(job, os.environ),
            stdin=0 if tty else subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=_take_foreground(tty),
        )
    except OSError as exc:
        log.write(("nbremote: cannot run %s: %s\n" % (job["argv"][0], exc.strerror)).encode())
        finish(job_path, {"exit_code": 127, "ended": time.time(), "error": exc.strerror})
        return 127

    def forward(number: int, _frame: object) -> None:
        try:
            os.killpg(child.pid, number)
        except OSError:
            pass

    for number in FORWARDED:
        signal.signal(number, forward)
    copy = open(job["log"], "rb") if tty else None
    if copy:
        copy.seek(0, 2)
    while child.poll() is None:
        if copy:
            data = copy.read()
            if data:
                os.write(1, data)
        time.sleep(COPY_POLL)
    finish(job_path, {"exit_code": child.returncode, "ended": time.time()})
    return None


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
