"""The log scan: no token, API key, password or message text in any gateway's log.

Every gateway a test starts (`GatewayProcess`) logs to a file; at the end of
the run (`tests/conftest.py`, `pytest_sessionfinish`) every one of those files
is scanned for:

* tokens by their shape: JWTs, our API keys (`sk-` + 32 hex, `ragflow-` + 43),
  and the tests' signing key;
* every password the tests send: each `"password": "<literal>"` and
  `…PASSWORD = "<literal>"` in the tests' source;
* message text: the fake model server's replies all contain
  "Fake reply to:", and the demo model's "built-in demo model, not a real
  AI"; a reply's text in a log shows as one of those.

A finding fails the run, naming the file, the line and what leaked (masked).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.gatewayproc import SECRET

TESTS = Path(__file__).parent
_SHAPES = {
    "a JWT": re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"),
    "an API key": re.compile(r"\bsk-[0-9a-fA-F]{32}\b"),
    "a RAGFlow key": re.compile(r"\bragflow-[A-Za-z0-9_-]{43}\b"),
}
_PASSWORD_LITERALS = re.compile(
    r"""["']password["']\s*:\s*["']([^"'\n]{6,})["']|PASSWORD\s*=\s*["']([^"'\n]{6,})["']"""
)
# What replies say, whichever model wrote them (tests/fakes/upstream.py, upstream/demo.py).
REPLY_MARKERS = ("Fake reply to:", "built-in demo model, not a real AI")


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def sent_passwords() -> set[str]:
    """Every password literal the tests send."""
    found: set[str] = set()
    for source in TESTS.rglob("*.py"):
        if source.name == "logscan.py":
            continue
        for match in _PASSWORD_LITERALS.finditer(source.read_text(errors="replace")):
            password = match[1] or match[2]
            if not password.isdigit():  # a number would match durations and ports
                found.add(password)
    return found


def scan(paths: Iterable[Path]) -> list[Finding]:
    words = {SECRET: "the signing key"}
    words.update({password: "a password" for password in sent_passwords()})
    words.update({marker: "a reply's text" for marker in REPLY_MARKERS})
    findings: list[Finding] = []
    for path in paths:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name, shape in _SHAPES.items():
                if shape.search(line):
                    findings.append(Finding(path, number, name))
            for word, name in words.items():
                if word in line:
                    findings.append(Finding(path, number, name))
    return findings
