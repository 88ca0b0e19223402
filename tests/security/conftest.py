"""Fixtures for the security suite: the lab's, shared with tests/lab.

tests/lab/conftest.py is loaded here under its own module name, so its
markers, `build_or_skip` and `build_lab` work the same in this folder. The
session `lab` reuses a lab tests/lab has already built in this run: the
machine-wide lab lock allows one lab at a time, so a second one built in the
same process would wait on itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_LAB_DIR = Path(__file__).resolve().parents[1] / "lab"
if str(_LAB_DIR) not in sys.path:
    sys.path.insert(0, str(_LAB_DIR))

_spec = importlib.util.spec_from_file_location("nbremote_lab_conftest", _LAB_DIR / "conftest.py")
lab_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab_conftest)


build_or_skip = lab_conftest.build_or_skip
build_lab = lab_conftest.build_lab
pytest_configure = lab_conftest.pytest_configure

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _HERE in Path(item.path).resolve().parents and "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


# The same fixture functions as tests/lab's; the session `lab` reuses a live lab.
lab = lab_conftest.lab
_lab_clean_after_test = lab_conftest._lab_clean_after_test
alice_password = lab_conftest.alice_password
