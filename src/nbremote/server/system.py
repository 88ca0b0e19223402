"""The one function that runs a program for the server commands.

LC_ALL=C because sshd's, nft's and ufw's messages are matched and shown; no
shell ever; a missing program comes back as exit 127 with a message instead
of an exception, so callers have one failure path.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from typing import Callable, Sequence

log = logging.getLogger(__name__)

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Runner = Callable[..., subprocess.CompletedProcess]


def run(
    argv: Sequence[str], *, input: str | None = None, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["LC_ALL"] = "C"
    # sudo and cron give root a PATH without /usr/sbin, where sshd and nft live.
    full_env["PATH"] = f"{full_env.get('PATH', '')}:{SBIN_PATH}".strip(":")
    full_env.update(env or {})
    log.debug("run %s", shlex.join(argv))
    try:
        return subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer after {timeout:.0f} s")


def which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def is_root() -> bool:
    return os.geteuid() == 0
