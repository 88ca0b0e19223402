"""The lock pins, for each supported Python, a release of everything the project requires.

Offline: the lock's markers and the project's are evaluated for each Python, and each
requirement must be met by a pin. A dependency added to pyproject.toml without
`python scripts/lock.py` fails here; tests/packaging/test_lock.py has pip resolve it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("lock_script", REPO / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_supported_pythons_follow_requires_python():
    low = re.fullmatch(r">=\s*3\.(\d+)", lock.project()["requires-python"]).group(1)
    assert lock.supported()[0] == f"3.{low}"
    assert "3.10" in lock.supported() and "3.13" in lock.supported()


@pytest.mark.parametrize("version", lock.supported())
def test_every_requirement_is_pinned_for(version):
    pinned: dict[str, list[str]] = {}
    for pin in lock.pins_for(version):
        name, _, release = pin.partition("==")
        pinned.setdefault(canonicalize_name(name), []).append(release)
    assert all(len(releases) == 1 for releases in pinned.values()), (
        f"the lock pins a package twice for Python {version}: {pinned}"
    )
    for text in lock.requirements_for(version):
        requirement = Requirement(text)
        releases = pinned.get(canonicalize_name(requirement.name))
        assert releases, (
            f"{requirement.name} is not in requirements/lock.txt for Python {version}: run `python scripts/lock.py`"
        )
        assert requirement.specifier.contains(releases[0], prereleases=True), (
            f"the lock pins {requirement.name}=={releases[0]}, but pyproject.toml asks {text}"
        )
