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
