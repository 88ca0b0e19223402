"""The console script. `nbremote up HOST` starts its login before the CLI is imported (click
and every command's modules, most of the client's start-up), so the login runs during that
import; the CLI then parses the command as always and finds the login begun. Anything the
scan here is not sure of goes to the CLI untouched."""

from __future__ import annotations

import os
import sys

# The options of the group (before the command) and of `up`, as click parses them: True for
# one that takes a value. tests/unit/test_entry.py holds these tables to cli.cli's and
# cli.up's parameters, so the scan cannot drift from the parser.
GROUP_OPTIONS = {"-v": False, "--verbose": False, "--debug": False, "--version": False, "-h": False, "--help": False}
UP_OPTIONS = {
    "--dir": True,
    "--lab": False,
    "--notebook": False,
    "--env": True,
    "--port": True,
    "--no-browser": False,
    "--detach": False,
    "--socket": False,
    "--keep-output": False,
    "--no-keep-output": False,
    "--forward": True,
    "--json": False,
    "--slurm": True,
    "--timeout": True,
    "-h": False,
    "--help": False,
}
# Options after which the scan gives up: help and version print and exit; the others can make
# `up` refuse its arguments after HOST is resolved (with Slurm, without a host of its own), and
# a refusal should not wait on a login.
_NOT_SURE = {"-h", "--help", "--version", "--socket", "--keep-output", "--forward", "--slurm"}


class Up:
    """What the scan found in `up`'s arguments: enough to begin its login."""

    def __init__(self, host: str, timeout: float, verbose: bool):
        self.host = host
        self.timeout = timeout
        self.verbose = verbose


def scan(args: list[str]) -> Up | None:
    """HOST, --timeout and -v of `nbremote [-v|--debug] up HOST [OPTIONS]`, when every word is
    one the scan knows and click will accept them; None otherwise."""
    verbose = False
    words = iter(args)
    for word in words:
        if word == "up":
            break
        if GROUP_OPTIONS.get(word) is not False or word in _NOT_SURE:
            return None
        verbose = True  # -v, --verbose or --debug: each logs the steps
    else:
        return None
    host: str | None = None
    timeout = 10.0  # cli.up's default, which test_entry.py checks
    for word in words:
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in _NOT_SURE or name == "--":
            return None
        if not name.startswith("-"):
            if host is not None or not name:
                return None  # a second argument is click's to refuse
            host = name
            continue
        takes_value = UP_OPTIONS.get(name)
        if takes_value is None or (eq and not takes_value):
            return None
        if takes_value:
            if not eq:
                following = next(words, None)  # click takes the next word whatever it looks like
                if following is None:
                    return None
                value = following
            if name == "--timeout" or name == "--port":
                number = _number(name, value)
                if number is None:
                    return None
                if name == "--timeout":
                    timeout = number
    if host is None:
        return None
    return Up(host, timeout, verbose)


def _number(name: str, value: str) -> float | None:
    """The value click would accept for --timeout (a float, at least 1) or --port (1 to 65535)."""
    try:
        number = float(value) if name == "--timeout" else int(value)
    except ValueError:
        return None
    if name == "--timeout":
        return number if number >= 1 else None
    return number if 1 <= number <= 65535 else None


def main() -> None:
    args = sys.argv[1:]
    # Shell completion runs the CLI with the words in the environment, and logs in nowhere.
    found = None if any(k.startswith("_NBREMOTE_COMPLETE") for k in os.environ) else scan(args)
    place = None
    if found is not None:
        from nbremote import remote
        from nbremote.console import log_steps
        from nbremote.errors import NbremoteError

        if found.verbose:
            log_steps()
        try:
            place = remote.begin_login_for(found.host, timeout=found.timeout, interactive=sys.stdin.isatty())
        except NbremoteError:
            place = None  # a HOST or profile file the CLI will refuse, with its usual message
    try:
        from nbremote import cli

        cli.main(args)
    finally:
        if place is not None:
            remote.abandon_unclaimed(place)
