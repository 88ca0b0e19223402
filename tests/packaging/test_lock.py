"""requirements/lock.txt installs on every Python that requires-python claims.

pip itself resolves the lock for each Python (`--python-version X --only-binary=:all:
--dry-run`, against PyPI): a pin that needs a newer Python (ipython 9 on 3.10), or has
no wheel for X, fails here. scripts/lock.py regenerates the lock; see its docstring.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("lock_script", REPO / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


@pytest.fixture(scope="module")
def resolutions():
    # One pip a Python, all at once: each waits mostly on PyPI, so together they take
    # about as long as one.
    versions = lock.supported()
    with ThreadPoolExecutor(len(versions)) as pool:
        return dict(zip(versions, pool.map(lock.check, versions)))


@pytest.mark.parametrize("version", lock.supported())
def test_the_lock_resolves_with_pip_for(version, resolutions):
    done = resolutions[version]
    assert done.returncode == 0, (
        f"requirements/lock.txt does not install on Python {version}: regenerate it with "
        f"`python scripts/lock.py`\n{done.stderr[-3000:]}"
    )
