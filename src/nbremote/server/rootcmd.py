"""The root command a hint prints (`sudo … server init`), written so that it runs as printed.

sudo replaces PATH with its secure_path, so an nbremote installed in a venv (the README
installs it in ~/.nbremote) is "command not found" under `sudo nbremote`: unless sudo
would find this very nbremote, the hint names it by its full path.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys

# Debian's and Ubuntu's /etc/sudoers; read from there when it is readable (root only).
DEFAULT_SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
SUDOERS = "/etc/sudoers"


def secure_path(sudoers: str = SUDOERS) -> str:
    try:
        with open(sudoers, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return DEFAULT_SECURE_PATH
    found = re.findall(r'^\s*Defaults\s+secure_path\s*=\s*"?([^"\n]+)"?', text, re.M)
    return found[-1].strip() if found else DEFAULT_SECURE_PATH


def running_program() -> list[str]:
    """This nbremote as a command: its script's absolute path, else `python -m nbremote`."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "nbremote" and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    found = shutil.which("nbremote")
    if found:
        return [os.path.abspath(found)]
    return [sys.executable, "-m", "nbremote"]


def command(*words: str, root: bool | None = None, path: str | None = None) -> str:
    """`sudo nbremote WORDS…` as it must be typed here; as root, without sudo.

    The short `nbremote` is printed only where the command's PATH (sudo's secure_path,
    or root's own PATH) finds this same program.
    """
    root = os.geteuid() == 0 if root is None else root
    program = running_program()
    search = (os.environ.get("PATH", "") if root else secure_path()) if path is None else path
    short = shutil.which("nbremote", path=search)
    if len(program) == 1 and short and os.path.exists(program[0]) and os.path.samefile(short, program[0]):
        program = ["nbremote"]
    return ("" if root else "sudo ") + shlex.join(program + list(words))
