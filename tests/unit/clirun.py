"""Run the real CLI entry point in-process and collect what it printed."""

from __future__ import annotations

import pytest

from nbremote import cli


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return caught.value.code, out, err
