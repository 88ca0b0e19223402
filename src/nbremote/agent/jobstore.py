"""The job records under the agent's state dir (layout in jobs.py), shared by the jobs run
with tmux or setsid (jobs.py) and those run on Slurm (slurm.py)."""

from __future__ import annotations


import json
import os
import re

from . import state
from .protocol import AgentError

TYPE_CHECKING = False  # typing's import would cost every request; mypy reads these alone
if TYPE_CHECKING:
    from .protocol import Doc

NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.match(name) or name.endswith(".end"):
        raise AgentError(
            "bad_request",
            "job name %r is not valid" % (name,),
            hint="use up to 64 letters, digits, '-', '_' or '.', not starting with '.'",
        )
    return name


def folder() -> str:
    return state.private_dir("jobs")


def path(name: str, suffix: str) -> str:
    return os.path.join(folder(), name + suffix)


def load(name: str) -> Doc | None:
    return state.read_object(path(name, ".json"))


def save(record: Doc) -> None:
    state.write_private(path(record["name"], ".json"), json.dumps(record, indent=1, sort_keys=True))


def end(name: str) -> Doc | None:
    doc = state.read_object(path(name, ".end.json"))
    return doc if doc is not None and isinstance(doc.get("exit_code"), int) else None


def names() -> list[str]:
    return sorted(
        n[: -len(".json")] for n in os.listdir(folder()) if n.endswith(".json") and not n.endswith(".end.json")
    )


def auto_name(argv: list[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "", os.path.basename(argv[0]))[:40] or "job"
    taken = set(names())
    number = 1
    while "%s-%d" % (base, number) in taken:
        number += 1
    return "%s-%d" % (base, number)
