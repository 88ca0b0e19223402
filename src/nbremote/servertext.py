"""A server's text made safe before the laptop prints or uses it.

Whatever the agent reports (an error message, a GPU's name, a directory) may reach the
terminal or a command line: these checks and this cleaning are the one place that says
how. Kept apart from agentlink (which speaks to the agent) so that what only reads the
laptop's records, such as `up` reattaching to a live session, imports no more than this.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # typing's own, without importing typing at run time (mypy knows the name)
if TYPE_CHECKING:
    from typing import TypeGuard

MAX_MESSAGE = 2000
# C0 and C1 controls, DEL, and the bidirectional overrides that make text read
# differently from what it is: a server's text may reach the terminal, never these.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(value: object, limit: int = MAX_MESSAGE) -> str:
    """A server's free text (an error message, a GPU's name) made safe to print: one line, bounded."""
    text = _UNSAFE.sub("\ufffd", value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_safe_text(value: object, limit: int = 4096) -> TypeGuard[str]:
    """A name or path from the server that is used as is: a non-empty string, bounded, no controls."""
    return isinstance(value, str) and 0 < len(value) <= limit and not _UNSAFE.search(value)


def is_server_path(value: object) -> TypeGuard[str]:
    """An absolute path on the server (the agent resolves every directory it reports)."""
    return is_safe_text(value) and value.startswith("/")
