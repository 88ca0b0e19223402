"""One row of a check's verdict, shown by `nbremote doctor` (laptop) and `nbremote server check`.

Apart from both so that the laptop's doctor does not import the server set-up, and the firewall
can report a row without importing the checks that read sshd.
"""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "needs root"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def summary(rows: list[Check]) -> dict[str, int]:
    return {status: sum(1 for r in rows if r.status == status) for status in (PASS, WARN, FAIL, SKIP)}


def check_lines(rows: list[Check]) -> list[str]:
    """The rows as shown: a mark, the status, the name, the detail, and the fix below it."""
    width = max((len(r.name) for r in rows), default=0)
    lines = []
    for r in rows:
        mark = {PASS: "✓", WARN: "!", FAIL: "✗"}.get(r.status, "·")
        lines.append(f"{mark} {r.status:<10} {r.name:<{width}}  {r.detail}")
        if r.fix:
            lines.append(f"  {'':<10} {'':<{width}}  fix: {r.fix}")
    return lines
