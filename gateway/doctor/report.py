"""What the doctor found: one `Check` per probe, gathered in a `Report`, and its text form.

    OK    health              /health 200, /ready 200 (bus ok, store ok)
    FAIL  websocket-upgrade   426 on /ws/chat/…: the proxy dropped Upgrade
          fix: nginx: proxy_http_version 1.1; …
    SKIP  idle-stream         needs --slow
    1 fault (9 OK, 1 skipped)

A probe that finds a fault deep inside a helper raises `Fault`; the runner
turns it into a FAIL line, so no probe needs to thread errors back by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["OK", "FAIL", "SKIP"]

_COLORS = {"OK": "\033[32m", "FAIL": "\033[31m", "SKIP": "\033[33m"}
_RESET = "\033[0m"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: tuple[str, ...] = ()


def ok(name: str, detail: str) -> Check:
    return Check(name, "OK", detail)


def fail(name: str, detail: str, fix: Iterable[str] = ()) -> Check:
    return Check(name, "FAIL", detail, tuple(dict.fromkeys(fix)))


def skip(name: str, reason: str) -> Check:
    return Check(name, "SKIP", reason)


class Fault(Exception):
    """A probe found something wrong: what (`detail`) and the lines that fix it."""

    def __init__(self, detail: str, fix: Iterable[str] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fix = tuple(fix)


class Skip(Exception):
    """The check cannot run (an option is missing, or what it needs failed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Report:
    url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def faults(self) -> int:
        return sum(check.status == "FAIL" for check in self.checks)

    def get(self, name: str) -> Check:
        """The check called `name`; KeyError naming the ones there are."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"no check {name!r}; there are {[c.name for c in self.checks]}")

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("OK", "SKIP")}
        noun = "fault" if self.faults == 1 else "faults"
        return f"{self.faults} {noun} ({counts['OK']} OK, {counts['SKIP']} skipped)"

    def render(self, color: bool = False) -> str:
        width = max((len(check.name) for check in self.checks), default=0)
        lines = [render_check(check, width, color) for check in self.checks]
        return "".join(lines) + self.summary() + "\n"


def render_check(check: Check, width: int, color: bool = False) -> str:
    """One check's line (names padded to `width`), then its indented fix lines."""
    status = f"{check.status:<6}"
    if color:
        status = _COLORS[check.status] + status + _RESET
    lines = [f"{status}{check.name:<{width + 2}}{check.detail}".rstrip()]
    lines.extend(f"      fix: {line}" for line in check.fix)
    return "\n".join(lines) + "\n"
