"""The agent against real Jupyter and tmux on this machine, through the real bootstrap (no ssh)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# By path, so `import agentbox` works under any --import-mode.
_HERE = Path(__file__).resolve().parent
for _dir in (_HERE, _HERE.parent):  # the parent holds helpers both suites share (docs_examples.py)
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

from agentbox import HAVE_JUPYTER, HAVE_TMUX, AgentBox  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: starts its own Jupyter (a few seconds); runs by default, -m 'not slow' leaves it out"
    )


def pytest_collection_modifyitems(config, items):
    missing = [
        what for what, ok in (("jupyter-lab beside " + sys.executable, HAVE_JUPYTER), ("tmux", HAVE_TMUX)) if not ok
    ]
    # CI (NBREMOTE_REQUIRE_LAB=1) lets them run and fail rather than skip.
    if not missing or os.environ.get("NBREMOTE_REQUIRE_LAB") == "1":
        return
    reason = "agent tests need " + " and ".join(missing)
    for item in items:
        if Path(item.path).name in ("test_agent_up.py", "test_agent_errors.py"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def box(tmp_path):
    """An AgentBox of its own, cleaned up (processes, tmux server) whatever the test left."""
    agent_box = AgentBox(tmp_path)
    yield agent_box
    agent_box.cleanup()
