"""pytest imports test files by their base name (rootdir-relative imports, no packages): two
files of one name in different folders stop the whole run at collection, so the names stay unique."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    seen: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "artifacts" not in path.parts and "__pycache__" not in path.parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    clashes = {
        name: paths for name, paths in seen.items() if len(paths) > 1 and name not in ("__init__.py", "conftest.py")
    }
    assert not clashes, f"rename one of each: {clashes}"
