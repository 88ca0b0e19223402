"""The job names `run`, `jobs` and `status` last saw on each host, kept for shell completion.

Apart from completion.py (click's side) so that the commands' core code does not import click.
Only a cache: a broken or missing file means fewer suggestions, and failing to write it never
fails a command.
"""

from __future__ import annotations

import json
from pathlib import Path

from nbremote import paths

MAX_JOBS_PER_HOST = 200


def _jobs_path() -> Path:
    return paths.cache_dir() / "jobs.json"


def _read_jobs() -> dict[str, list[str]]:
    doc = paths.read_object(_jobs_path()) or {}
    return {
        host: [n for n in names if isinstance(n, str)]
        for host, names in doc.items()
        if isinstance(host, str) and isinstance(names, list)
    }


def remember_jobs(host: str | None, names: list[str], *, complete: bool) -> None:
    """Note job names seen on `host`: the whole list (complete) or new ones (a `run`)."""
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
