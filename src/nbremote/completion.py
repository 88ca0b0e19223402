"""Shell completion for bash, zsh and fish: click's, fed from local files only.

Commands, options and choices come from click itself. HOST completes the
host profile names and the literal `Host` names of ~/.ssh/config; JOB (in
`logs`, `attach`, `kill`) completes the job names that `run`, `jobs` and
`status` last saw on that host, kept in a small cache file. Completing never
connects, never prompts and never fails loudly: a tab press must answer at
once, so a broken or missing file just means fewer suggestions. A job started
from another laptop appears after the next `nbremote jobs HOST`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class

from nbremote import paths, profiles, sshfiles
from nbremote.errors import NbremoteError

SHELLS = ("bash", "zsh", "fish")
# click runs the completion when this is set in the environment (see the scripts).
COMPLETE_VAR = "_NBREMOTE_COMPLETE"
MAX_JOBS_PER_HOST = 200


def script(command: click.Command, shell: str) -> str:
    """The script that, sourced by `shell` (one of SHELLS), completes `nbremote`."""
    return get_completion_class(shell)(command, {}, "nbremote", COMPLETE_VAR).source()


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

def _jobs_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nbremote" / "jobs.json"


def _read_jobs() -> dict[str, list[str]]:
    try:
        doc = json.loads(_jobs_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {host: [n for n in names if isinstance(n, str)]
            for host, names in doc.items() if isinstance(host, str) and isinstance(names, list)}


def remember_jobs(host: str | None, names: list[str], *, complete: bool) -> None:
    """Note job names seen on `host`: the whole list (complete) or new ones (a `run`).

    Only a cache for completion: failing to write it must never fail the command.
    """
    key = host or ""
    cache = _read_jobs()
    known = [] if complete else [n for n in cache.get(key, []) if n not in names]
    merged = (known + list(names))[-MAX_JOBS_PER_HOST:]
    if cache.get(key) == merged:
        return
    cache[key] = merged
    path = _jobs_path()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths.write_private(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass


def job_names(host: str | None) -> list[str]:
    return sorted(_read_jobs().get(host or "", []))


def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    host = ctx.params.get("host")
    return [CompletionItem(name) for name in job_names(host) if name.startswith(incomplete)]
