"""nbremote.logs: the client's logger keeps logging out of the start-up and says what
logging.getLogger said, whether logging is imported or not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, timeout=60
    )


def test_up_hosts_early_imports_leave_logging_out():
    done = _run(
        "import sys, nbremote.entry, nbremote.remote, nbremote.errors\n"
        "print('logging' in sys.modules, 'typing' in sys.modules)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_without_logging_debug_and_info_are_dropped_and_warnings_reach_stderr():
    done = _run(
        "import sys\n"
        "from nbremote import logs\n"
        "log = logs.get('nbremote.x')\n"
        "log.debug('d %s', 1)\n"
        "log.info('i %s', 2)\n"
        "print('logging' in sys.modules)\n"
        "log.warning('w %s', 3)\n"
        "log.error('e %s', 4)\n"
    )
    assert done.returncode == 0
    assert done.stdout == "False\n"
    # What Python's last-resort handler prints for an unconfigured logging.getLogger(...).warning.
    assert done.stderr == "w 3\ne 4\n"


def test_with_logging_configured_every_record_goes_to_it_under_the_modules_name():
    done = _run(
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(levelname)s %(name)s %(funcName)s: %(message)s')\n"
        "from nbremote import logs\n"
        "log = logs.get('nbremote.x')\n"
        "def step():\n"
        "    log.debug('d %s', 1)\n"
        "    log.info('i %s', 2)\n"
        "    log.warning('w %s', 3)\n"
        "    log.error('e %s', 4)\n"
        "step()\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "DEBUG nbremote.x step: d 1",
        "INFO nbremote.x step: i 2",
        "WARNING nbremote.x step: w 3",
        "ERROR nbremote.x step: e 4",
    ]
