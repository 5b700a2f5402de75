"""The result of one doctor check, and the names every check speaks of."""

from __future__ import annotations

from dataclasses import dataclass

REGISTRY = "registry-1.docker.io"
GUIDE = "docs/runner-guide.md"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: the check could not run
    detail: str
    fix: str = ""

    def line(self) -> str:
        status = {True: "OK  ", False: "FAIL", None: "SKIP"}[self.ok]
        text = f"{status} {self.name}: {self.detail}"
        if self.ok is False and self.fix:
            text += f" -- fix: {self.fix}"
        return text


def exit_code(checks: list[Check]) -> int:
    """0 when every check that ran passed (skipped ones do not count), else 1."""
    return 1 if any(c.ok is False for c in checks) else 0
