"""Fixtures for the lab tests: one Lab per session, clean between tests.

Without root / ip netns / the lab venv the lab tests are skipped with the
reason; NBREMOTE_REQUIRE_LAB=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Import by path so this works under any --import-mode and without an
# __init__.py in tests/lab.
_HERE = Path(__file__).resolve().parent
for _dir in (_HERE, _HERE.parent):  # the parent holds helpers both suites share (docs_examples.py)
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import netlab  # noqa: E402

_LAB_DIR = _HERE


def _lab_required() -> bool:
    return os.environ.get("NBREMOTE_REQUIRE_LAB") == "1"


def build_or_skip(workdir: Path, **kw) -> netlab.Lab:
    """Lab.build, turning LabUnavailable into skip (or fail when required)."""
    try:
        return netlab.Lab.build(workdir, **kw)
    except netlab.LabUnavailable as e:
        if _lab_required():
            pytest.fail(f"NBREMOTE_REQUIRE_LAB=1 but the lab is unavailable: {e.reason}", pytrace=False)
        pytest.skip(f"lab unavailable: {e.reason}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "lab: runs the real CLI in network namespaces against a real sshd "
        "(root only; skipped elsewhere unless NBREMOTE_REQUIRE_LAB=1)",
    )
    config.addinivalue_line(
        "markers",
        "lab_fresh: builds and tears down its own Lab, so it runs before any "
        "test that uses the shared session lab (only one lab can exist at a time)",
    )


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _LAB_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.lab)
    # The session lab is built lazily by the first test that needs it, so
    # tests that want their own lab must come before all of those.
    fresh = [i for i in items if i.get_closest_marker("lab_fresh")]
    if fresh:
        rest = [i for i in items if not i.get_closest_marker("lab_fresh")]
        items[:] = fresh + rest


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    # tests/security has its own session `lab`: when it ran first, its lab is
    # the one to use, since a second build in this process would wait on the
    # machine-wide lock its own first lab holds.
    live = [each for each in netlab.Lab.live_labs() if each.alive]
    if live:
        yield live[0]
        return
    logging.getLogger("nbremote.lab").setLevel(logging.INFO)
    built = build_or_skip(tmp_path_factory.mktemp("lab"))
    try:
        yield built
    finally:
        failures = built.teardown()
        if failures:
            pytest.fail(f"lab teardown failed: {failures}", pytrace=False)


@pytest.fixture
def alice_password(lab):
    """A password for alice, for the tests that log in with one; her old hash is put back after."""
    password = "correct-horse-battery"
    shadow = subprocess.run(["getent", "shadow", netlab.ALICE], capture_output=True, text=True, check=True)
    subprocess.run(["chpasswd"], input=f"{netlab.ALICE}:{password}\n", text=True, check=True)
    yield password
    subprocess.run(["usermod", "-p", shadow.stdout.split(":")[1], netlab.ALICE], check=True)


@pytest.fixture
def lossy_link(lab):
    """A relay link whose set_down drops packets silently, as a real outage does
    (a downed veth gives the endpoints instant local errors instead)."""
    from delaylink import DelayLink

    link = lab.replace_link(functools.partial(DelayLink.start, delay_ms=0))
    yield link
    lab.replace_link(netlab.make_veth_link)


@pytest.fixture
def build_lab(tmp_path):
    """Factory for a private Lab (tests marked lab_fresh); torn down after."""
    made: list[netlab.Lab] = []

    def make(**kw) -> netlab.Lab:
        lab_ = build_or_skip(tmp_path / f"lab{len(made)}", **kw)
        made.append(lab_)
        return lab_

    yield make
    for lab_ in made:
        lab_.teardown()


@pytest.fixture(autouse=True)
def _lab_clean_after_test(request):
    # Only for tests that use the shared lab: requesting it here for every
    # test would build it for lab_fresh tests too.
    if "lab" not in request.fixturenames:
        yield
        return
    the_lab = request.getfixturevalue("lab")
    yield
    the_lab.cleanup_between_tests()


def pytest_terminal_summary(terminalreporter):
    # Screenshots and logs the tests left for a human (see test_browser.py):
    # named in the output so a CI log says where to look.
    paths = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "teardown"
        for key, value in getattr(report, "user_properties", ())
        if key == "artifact"
    ]
    if paths:
        terminalreporter.write_sep("-", "lab artifacts")
        for path in paths:
            terminalreporter.write_line(path)
