"""scripts/test.sh, the README's second command, runs on Debian 12, Ubuntu 22.04 and 24.04.

apt-get install fails as a whole when one name is unknown, and Ubuntu has no `chromium`
package (a snap only): it must not be on the unconditional install line, and the browser
tests must get a Chromium another way there.
"""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = (Path(__file__).resolve().parents[2] / "scripts" / "test.sh").read_text()


def _main_install_line() -> list[str]:
    joined = SCRIPT.replace("\\\n", " ")
    line = next(text for text in joined.splitlines() if "apt-get install" in text and "openssh-server" in text)
    return line.split("#")[0].split()


def test_chromium_is_not_on_the_line_every_distribution_must_satisfy():
    assert "chromium" not in _main_install_line()


def test_chromium_comes_from_apt_where_it_is_a_package_else_from_playwright():
    assert re.search(r"if apt-cache show chromium .*\n\s+apt-get install .*chromium", SCRIPT)
    assert "playwright install --with-deps chromium" in SCRIPT
    assert "PLAYWRIGHT_BROWSERS_PATH=/opt/nbremote-lab/ms-playwright" in SCRIPT


def test_apt_lists_are_fetched_first():
    assert SCRIPT.index("apt-get update") < SCRIPT.index("apt-get install")


def test_every_other_suite_runs_beside_the_lab_with_ctrl_c_working():
    joined = SCRIPT.replace("\\\n", " ")
    [beside] = [line for line in joined.splitlines() if line.rstrip().endswith("&") and "pytest" in line]
    # A `&` job of a script ignores SIGINT, and so would every `up` a test presses Ctrl-C in.
    assert "env --default-signal=INT" in beside
    # Split by the lab marker: the tests of tests/security that need no lab run beside it too.
    assert '--ignore=tests/lab -m "not lab"' in beside
    assert re.search(
        r'^env --default-signal=INT "\$venv/bin/python" -m pytest "\$@" tests/lab tests/security -m lab ', joined, re.M
    )
    assert 'exec env --default-signal=INT "$venv/bin/python" -m pytest "$@"' in joined
    assert 'wait "$others"' in joined and "exit $((lab_rc ? lab_rc : others_rc))" in joined
