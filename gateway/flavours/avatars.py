"""Pictures the web app shows beside people and models when none was uploaded:
a round badge with up to two initials on a colour of the name's own, as SVG.

    avatar_svg("Ada Lovelace", "u-1") → b'<svg …><circle fill="#4f6bd8"/><text>AL</text></svg>'

Deterministic (the same name and id give the same picture on every replica),
small (under 400 bytes), and safe: the text is XML-escaped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from xml.sax.saxutils import escape

# Muted colours that white text reads well on.
PALETTE = (
    "#4f6bd8",
    "#2f8f83",
    "#b0572f",
    "#7b4fc4",
    "#3d7a3a",
    "#a8486b",
    "#5a6b7d",
    "#8a6d1f",
    "#2c7fb8",
    "#9c4a4a",
)
SVG = "image/svg+xml"
# Raster pictures only (the web app's canvas makes PNG): an SVG can carry script,
# and it would run in the gateway's origin.
_DATA_URL = re.compile(r"^data:(image/(?:png|jpeg|gif|webp));base64,(.+)$", re.S)


def initials(name: str) -> str:
    words = [word for word in re.split(r"[\s._@-]+", name) if word]
    if not words:
        return "?"
    picked = words[0][0] + (words[1][0] if len(words) > 1 else "")
    return picked.upper()


def avatar_svg(name: str, seed: str) -> bytes:
    colour = PALETTE[hashlib.sha256(seed.encode()).digest()[0] % len(PALETTE)]
    text = escape(initials(name))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">'
        f'<circle cx="48" cy="48" r="48" fill="{colour}"/>'
        '<text x="48" y="48" dy=".35em" text-anchor="middle" fill="#fff" '
        f'font-family="sans-serif" font-size="38">{text}</text></svg>'
    ).encode()


def data_url_image(url: str) -> tuple[str, bytes] | None:
    """(content type, bytes) of an uploaded picture kept as a data: URL, as Open
    WebUI keeps them; None for anything else."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    try:
        return match.group(1), base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
