"""Guarantee 7: the dependencies are locked, audited in CI, and each one is accounted for.

The audit itself (scripts/audit.py over requirements/lock.txt) runs in
scripts/test.sh before the tests; these tests keep the pieces it relies on true.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # a runtime dependency there (pyproject.toml), like profiles.py reads it
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def direct_dependencies() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"runtime": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: [_name(r) for r in reqs if "python_version < '3.11'" not in r] for group, reqs in groups.items()}


def test_every_direct_dependency_is_pinned_in_the_lock():
    pinned = {
        name.lower().replace("_", "-")
        for name in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", LOCK.read_text(), re.M)
    }
    missing = {name for names in direct_dependencies().values() for name in names} - pinned
    assert not missing, f"not in {LOCK.name}: {sorted(missing)}; regenerate it with the command at its top"


def test_the_lock_says_how_it_was_made_and_ci_audits_it():
    assert "python scripts/lock.py" in LOCK.read_text().split("\n")[1]
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert "-c requirements/lock.txt" in script
    assert "scripts/audit.py requirements/lock.txt" in script
    assert script.index("scripts/audit.py") < script.index("-m pytest")


def test_docs_name_every_direct_dependency_and_why():
    docs = (ROOT / "docs" / "security.md").read_text().lower()
    section = docs.split("## dependencies", 1)[1]
    for group, names in direct_dependencies().items():
        for name in names:
            assert f"`{name}`" in section, f"docs/security.md does not say why {name} ({group}) is there"
