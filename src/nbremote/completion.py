"""Shell completion for bash, zsh and fish: click's, fed from local files only.

Commands, options and choices come from click itself. HOST completes the
host profile names and the literal `Host` names of ~/.ssh/config; JOB (in
`logs`, `attach`, `kill`) completes the job names that `run`, `jobs` and
`status` last saw on that host, kept in a small cache file (jobcache.py). Completing never
connects, never prompts and never fails loudly: a tab press must answer at
once, so a broken or missing file just means fewer suggestions. A job started
from another laptop appears after the next `nbremote jobs HOST`.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

from nbremote import jobcache, profiles, sshfiles
from nbremote.errors import NbremoteError

SHELLS = ("bash", "zsh", "fish")
# click runs the completion when this is set in the environment (see the scripts).
COMPLETE_VAR = "_NBREMOTE_COMPLETE"


def script(command: click.Command, shell: str) -> str:
    """The script that, sourced by `shell` (one of SHELLS), completes `nbremote`."""
    completer = get_completion_class(shell)
    assert completer is not None, shell  # SHELLS are all click's own
    return completer(command, {}, "nbremote", COMPLETE_VAR).source()


# --- host names --------------------------------------------------------------------


def host_names() -> list[str]:
    """Profile names first, then other literal Host names of ~/.ssh/config."""
    try:
        names = sorted(profiles.load())
    except NbremoteError:
        names = []
    try:
        text = sshfiles.user_config_path().read_text(errors="replace")
    except OSError:
        text = ""
    return names + sorted(set(sshfiles.host_names(text)) - set(names))


def complete_host(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(name) for name in host_names() if name.startswith(incomplete)]


def complete_profile(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    try:
        names = sorted(profiles.load())
    except NbremoteError:
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


# --- job names -----------------------------------------------------------------------


def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    host = ctx.params.get("host")
    return [CompletionItem(name) for name in jobcache.job_names(host) if name.startswith(incomplete)]
