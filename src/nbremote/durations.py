"""The one way a length of time is shown: `45 s`, `3 min 05 s`, `2 h 07 min`, `3 d 4 h`."""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import Callable


def duration(seconds: float | None) -> str:
    """A length of time to the unit that matters at its size; None (not known) is `-`."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def ago(when: object, now: Callable[[], float] = time.time) -> str:
    """Seconds since the epoch, or Jupyter's ISO time, as `3 min 05 s ago`; `-` when unknown."""
    if isinstance(when, str):
        from datetime import datetime  # only a time from Jupyter needs it: kept out of start-up

        text = when
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return text
    if not isinstance(when, (int, float)) or not when:
        return "-"
    return f"{duration(now() - when)} ago"
