"""The console script. `nbremote up HOST` starts its login before the CLI is imported (click
and every command's modules, most of the client's start-up), so the login runs during that
import; the CLI then parses the command as always and finds the login begun. Anything the
scan here is not sure of goes to the CLI untouched."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from nbremote.remote import Place

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
    """What the scan found in `up`'s arguments: enough to begin its login, and to reattach to a
    live session (session.reattach_early) with the options click will give `up`."""

    def __init__(self, host: str, timeout: float, verbose: bool):
        self.host = host
        self.timeout = timeout
        self.verbose = verbose
        # up's parameters by click's names, as click sets them: the last of a repeated option wins.
        self.directory: str | None = None
        self.lab: bool | None = None
        self.env: str | None = None
        self.port: int | None = None
        self.keep_output: bool | None = None
        self.as_json = False


def scan(args: list[str]) -> Up | None:
    """HOST and the options of `nbremote [-v|--debug] up HOST [OPTIONS]`, when every word is
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
    values: dict[str, str] = {}
    flags: list[str] = []
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
        if not takes_value:
            flags.append(name)
            continue
        if not eq:
            following = next(words, None)  # click takes the next word whatever it looks like
            if following is None:
                return None
            value = following
        if (name == "--timeout" or name == "--port") and _number(name, value) is None:
            return None
        values[name] = value
    if host is None:
        return None
    found = Up(host, float(values.get("--timeout", 10.0)), verbose)  # 10: cli.up's default (test_entry.py)
    found.directory = values.get("--dir")
    found.env = values.get("--env")
    found.port = int(values["--port"]) if "--port" in values else None
    for flag in flags:
        if flag in ("--lab", "--notebook"):
            found.lab = flag == "--lab"
        elif flag == "--no-keep-output":
            found.keep_output = False
    found.as_json = "--json" in flags
    return found


def _number(name: str, value: str) -> float | None:
    """The value click would accept for --timeout (a float, at least 1) or --port (1 to 65535)."""
    try:
        number = float(value) if name == "--timeout" else int(value)
    except ValueError:
        return None
    if name == "--timeout":
        return number if number >= 1 else None
    return number if 1 <= number <= 65535 else None


def _reattach(found: Up, place: Place) -> None:
    """Put a live session back (session.reattach_early) before the CLI is imported: its URL is
    printed once the forward answers with the token, and the CLI's `up` then goes on from its
    result (the browser, the keeper) as it would from its own."""
    from nbremote import session
    from nbremote.console import Console
    from nbremote.onhost import HostRunner
    from nbremote.runner import uses_slurm

    opts = session.options_for(
        found.host,
        directory=found.directory,
        lab=found.lab,
        env=found.env,
        port=found.port,
        timeout=found.timeout,
        socket=False,
        keep_output=found.keep_output,
    )
    if not uses_slurm(found.host, None):  # a Slurm job's result asks its agent (SlurmRunner)
        console = Console.for_terminal(json_mode=found.as_json)
        session.reattach_early(place, HostRunner(), opts, console, as_json=found.as_json)


def main() -> None:
    args = sys.argv[1:]
    # Shell completion runs the CLI with the words in the environment, and logs in nowhere.
    found = None if any(k.startswith("_NBREMOTE_COMPLETE") for k in os.environ) else scan(args)
    place = None
    if found is not None:
        if found.verbose:
            from nbremote.logs import log_steps

            log_steps()  # before the imports below: its clock starts when logging is imported
        from nbremote import early

        # A live session's forward, begun while the modules that decide on it are imported.
        early.begin(args[args.index("up") + 1 :])
        from nbremote import remote
        from nbremote.errors import NbremoteError

        try:
            place = remote.begin_login_for(found.host, timeout=found.timeout, interactive=sys.stdin.isatty())
            # The place `up` will take: a live session there can be reattached now.
            if remote.awaits_up(place):
                _reattach(found, place)
        except NbremoteError:
            pass  # a HOST, profile file or option the CLI will refuse, with its usual message
        except KeyboardInterrupt:
            from nbremote.console import interrupted

            interrupted()
        finally:
            early.settle()
    try:
        from nbremote import cli

        cli.main(args)
    finally:
        if place is not None:
            remote.abandon_unclaimed(place)
