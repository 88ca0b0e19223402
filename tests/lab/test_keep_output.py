"""Output that survives a closed laptop, in a real browser: with `up --keep-output` the
server runs the cell, so what it prints while no page is open is in the notebook when the
page comes back, and in the saved .ipynb.

The server's Jupyter is the venv scripts/test.sh makes with jupyter-server-nbmodel[lab]
(/opt/nbremote-lab/keep-output), named with --env as a user names theirs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from netlab import ALICE

from test_browser import _origin, _require, browser, stop, up_in_foreground  # noqa: F401  (browser: a fixture)
from test_up import wait_until

KEEP_VENV = Path("/opt/nbremote-lab/keep-output")
LINES = 24
# Two lines a second for 12 s; flush, or the kernel holds the lines back in its buffer.
TICKER = f"import time\nfor i in range({LINES}):\n    print('line', i, flush=True)\n    time.sleep(0.5)"
EXPECTED = "".join(f"line {i}\n" for i in range(LINES))


def _saved_output(path: Path) -> str:
    try:
        cell = json.loads(path.read_text())["cells"][0]
    except (OSError, ValueError, IndexError, KeyError):
        return ""
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []) if o.get("name") == "stdout")


@pytest.fixture
def kept_documents(lab):
    yield
    # Where jupyter-server-ydoc puts them unless told otherwise; a failed run must not leave them.
    home = lab.user(ALICE).home
    for path in [home / ".jupyter_ystore.db", home / ".jupyter" / "collaboration_sessions.json"]:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "ui, flags, page",
    [("lab", (), "lab/tree"), ("notebook", ("--notebook",), "notebooks")],
    ids=["jupyterlab", "notebook7"],
)
def test_output_printed_while_the_page_is_closed_is_in_the_notebook_and_the_file(
    lab,
    browser,  # noqa: F811  (the fixture imported from test_browser)
    kept_documents,
    ui,
    flags,
    page,
):
    _require(
        (KEEP_VENV / "bin" / "jupyter-lab").exists(),
        f"{KEEP_VENV} is missing (scripts/test.sh makes it with jupyter-server-nbmodel[lab])",
    )
    client, url = up_in_foreground(lab, "--env", str(KEEP_VENV), "--keep-output", *flags)
    try:
        browser.ask("open", url=url, ui=ui)
        began = time.monotonic()
        browser.ask("start", code=TICKER)
        time.sleep(max(0.0, 3 - (time.monotonic() - began)))
        browser.ask("close_page")
        closed = time.monotonic() - began
        time.sleep(max(0.0, 9 - (time.monotonic() - began)))
        notebooks = sorted(lab.user(ALICE).home.glob("Untitled*.ipynb"))
        assert len(notebooks) == 1, notebooks
        token = url.split("token=", 1)[1]
        back = time.monotonic() - began
        reopened = browser.ask("reopen", url=f"{_origin(url)}/{page}/{notebooks[0].name}?token={token}")
        shown = browser.ask("outputs", index=0, until=f"line {LINES - 1}\n", timeout=60)
        assert "".join(shown["output"]) == EXPECTED, shown
        # Saved by the server itself (about a second after each change), no page asked.
        assert wait_until(lambda: _saved_output(notebooks[0]) == EXPECTED, 20), _saved_output(notebooks[0])
        browser.screenshot("reopened")
        home = lab.user(ALICE).home
        assert not (home / ".jupyter_ystore.db").exists(), "the update store belongs in nbremote's state"
        assert not (home / ".jupyter" / "collaboration_sessions.json").exists()
        print(
            f"{ui}: page closed at {closed:.1f} s, reopened at {back:.1f} s "
            f"(loaded in {reopened['ready_s']} s); {LINES} lines in the page and in {notebooks[0].name}"
        )
    finally:
        stop(client)
        lab.nbremote("down", "server")
