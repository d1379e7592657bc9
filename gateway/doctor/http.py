"""Plain HTTP probes: health, the token, CORS for a page's origin, SSE chunking.

SSE chunking uses the gateway's paced probe (`X-Gateway-Probe: pace` on a
streaming `/v1/chat/completions`, gateway/api/openai.py): four content chunks
0.4 s apart and no model call.  Through a proxy that streams, the first
arrives about 1.2 s before the last; through one that buffers, together.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import aiohttp

from gateway.doctor import fixes
from gateway.doctor.report import Fault, Skip
from gateway.doctor.target import SOCKETIO_PATH, Findings, Target, excerpt
from gateway.flavours.sse import SSEParser

# The gateway's side of the paced probe (gateway/api/openai.py; a test keeps
# the two equal): the doctor does not import the server.
PROBE_HEADER = "X-Gateway-Probe"
PROBE_CHUNKS = 4
PROBE_GAP_S = 0.4
PROBE_MODEL = "gateway-probe"
# Streamed when the first chunk came at least this share of the paced span
# before the last.  Scheduling noise only stretches the gaps; a buffering
# proxy shrinks them to ~0, so half the span keeps far from both.
STREAMED_SHARE = 0.5


# -- health --------------------------------------------------------------------------
async def health(target: Target, found: Findings) -> str:
    ready_note = ""
    for path in ("/health", "/ready"):
        shown = target.sub_path + path
        async with target.session.get(target.url(path)) as resp:
            text = await resp.text(errors="replace")
            status, kind, final_url = resp.status, resp.content_type, str(resp.url)
            redirected = bool(resp.history)
        if redirected:
            base = final_url.removesuffix(path)
            raise Fault(
                f"GET {shown} was redirected to {final_url}",
                (
                    f"run the doctor with the URL clients use: {base} (WebSocket handshakes and "
                    "POSTs do not follow redirects)",
                ),
            )
        if status == 404:
            raise _not_found(target, shown, text)
        if path == "/ready" and status == 503:
            found.reachable = True
            raise Fault(
                f"/health 200, /ready 503: not ready ({_failing_checks(text)})",
                (
                    "the gateway runs but cannot serve: fix what /ready names (the model "
                    "server's URL or key, the database, Redis)",
                ),
            )
        if status != 200:
            meaning, fix = fixes.http_status(status)
            if "HTTPS port" in text:  # nginx's "The plain HTTP request was sent to HTTPS port"
                meaning, fix = "plain HTTP to a TLS port", ("use https:// in URL",)
            raise Fault(f"GET {shown}: {status} {meaning}: {excerpt(text)}", fix)
        if kind != "application/json":
            raise Fault(
                f"GET {shown} answered {kind}, not the gateway's JSON",
                (
                    "something else answers this path (a web server's default page, a front-end "
                    "app's fallback): route it to the gateway",
                ),
            )
        if path == "/health":
            found.reachable = True
        else:
            ready_note = _failing_checks(text, ok=True)
    return f"/health 200, /ready 200 ({ready_note})"


# The gateway's own 404 hints (gateway/api/common.py `prefix_hint`).
_REACHED_UNDER = re.compile(r"It looks like the gateway is reached under (/\S*?):")
_LIVES_UNDER = re.compile(r"The gateway lives under (/\S*) \(GATEWAY_BASE_PATH\)")


def _not_found(target: Target, shown: str, text: str) -> Fault:
    """A 404 for /health: the path prefix is wrong somewhere; the gateway may say where."""
    reached = _REACHED_UNDER.search(text)
    if reached:
        prefix = reached.group(1)
        return Fault(
            f"GET {shown}: 404: the gateway says it is reached under {prefix}",
            fixes.sub_path_404(prefix),
        )
    lives = _LIVES_UNDER.search(text)
    if lives:
        base = lives.group(1)
        return Fault(
            f"GET {shown}: 404: the gateway says it lives under {base} (GATEWAY_BASE_PATH)",
            fixes.base_path_elsewhere(target.root, base),
        )
    return Fault(f"GET {shown}: 404", fixes.sub_path_404(target.sub_path))


def _failing_checks(text: str, ok: bool = False) -> str:
    """`/ready`'s `{"checks": {"store": "ok", "upstream x": "refused"}}`, in a few words."""
    with contextlib.suppress(ValueError, AttributeError):
        checks: dict[str, Any] = json.loads(text)["checks"]
        shown = [f"{name} {result}" for name, result in checks.items() if ok or result != "ok"]
        return ", ".join(shown) or "no checks"
    return excerpt(text)


# -- token ---------------------------------------------------------------------------
async def token(target: Target, found: Findings) -> str:
    if not target.token:
        raise Skip("no --token: the checks that need one are skipped")
    async with target.session.get(target.url("/v1/models"), headers=target.headers()) as resp:
        text = await resp.text(errors="replace")
        status = resp.status
    if status == 401:
        raise Fault(f"the gateway refused the token: {excerpt(text)}", fixes.TOKEN)
    if status != 200:
        meaning, fix = fixes.http_status(status)
        raise Fault(f"GET /v1/models: {status} {meaning}: {excerpt(text)}", fix)
    ids = [model["id"] for model in json.loads(text).get("data", [])]
    found.token_ok = True
    model = target.options.model
    if model is not None and model not in ids:
        raise Fault(f"--model {model} is not among the gateway's models ({', '.join(ids)})")
    if model is None and not ids:
        raise Fault(
            "the token works, but the gateway lists no models",
            ("OPENAI_API_BASE_URL(S) naming a model server, or GATEWAY_DEMO_MODEL=true",),
        )
    found.model = model or ids[0]
    listed = f"{len(ids)} model" + ("" if len(ids) == 1 else "s")
    return f"accepted; {listed} listed, the chats use {found.model}"


# -- cors ----------------------------------------------------------------------------
async def cors(target: Target, found: Findings) -> str:
    origin = target.options.origin
    if not origin:
        raise Skip("no --origin")
    problems = []
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    url = target.url("/api/chat/completions")
    async with target.session.options(url, headers=preflight) as resp:
        allowed = resp.headers.get("Access-Control-Allow-Origin")
        allowed_headers = resp.headers.get("Access-Control-Allow-Headers", "").lower()
        if allowed not in (origin, "*"):
            problems.append(
                f"preflight of /api/chat/completions: {resp.status}, "
                f"Access-Control-Allow-Origin {allowed or 'missing'}"
            )
        elif "authorization" not in allowed_headers and allowed_headers != "*":
            problems.append("preflight: Access-Control-Allow-Headers lacks authorization")
    handshake = target.url(f"{SOCKETIO_PATH}/?EIO=4&transport=polling")
    async with target.session.get(handshake, headers={"Origin": origin}) as resp:
        text = await resp.text(errors="replace")
        if resp.status == 403:
            problems.append(f"Socket.IO handshake: 403 ({excerpt(text)})")
        elif resp.status != 200:
            problems.append(f"Socket.IO handshake: {resp.status} ({excerpt(text)})")
        elif text.startswith("0"):
            await _close_engineio(target, handshake, text)
    if problems:
        raise Fault(f"{origin} refused: " + "; ".join(problems), _cors_fix(origin))
    return f"{origin} allowed: preflight and Socket.IO handshake"


async def _close_engineio(target: Target, handshake_url: str, opened: str) -> None:
    with contextlib.suppress(ValueError, KeyError, aiohttp.ClientError, OSError):
        sid = json.loads(opened[1:])["sid"]
        async with target.session.post(f"{handshake_url}&sid={sid}", data="1"):
            pass


def _cors_fix(origin: str) -> tuple[str, ...]:
    return (
        f"add {origin} to CORS_ALLOW_ORIGIN: ';'-separated origins written exactly as the "
        "browser sends them (scheme://host[:port], no path, no trailing slash), or *",
        "a page on the gateway's own host is always allowed: behind a proxy that needs the "
        "Host the browser used (nginx: proxy_set_header Host $http_host;) or "
        "X-Forwarded-Host from an address in GATEWAY_TRUSTED_PROXIES",
        "a proxy that answers OPTIONS itself must send the same Access-Control-* headers",
    )


# -- sse-chunking ----------------------------------------------------------------------
async def sse_chunking(target: Target, found: Findings) -> str:
    found.require_token(target)
    body = {
        "model": found.model or PROBE_MODEL,
        "stream": True,
        "messages": [{"role": "user", "content": "gateway doctor: paced probe"}],
    }
    headers = {**target.headers(), PROBE_HEADER: "pace", "Accept": "text/event-stream"}
    arrivals: list[float] = []
    texts: list[str] = []
    done = False
    sent = time.monotonic()
    url = target.url("/v1/chat/completions")
    async with target.session.post(url, json=body, headers=headers) as resp:
        if resp.status != 200:
            text = await resp.text(errors="replace")
            meaning, fix = fixes.http_status(resp.status)
            raise Fault(f"POST /v1/chat/completions: {resp.status} {excerpt(text) or meaning}", fix)
        parser = SSEParser()
        async for piece in resp.content.iter_any():
            now = time.monotonic() - sent
            for payload in parser.feed(piece):
                done = done or payload == "[DONE]"
                content = chunk_content(payload)
                if content:
                    arrivals.append(now)
                    texts.append(content)
    if not texts or not all(text.startswith("probe ") for text in texts):
        raise Skip("the gateway did not answer X-Gateway-Probe: pace (a version without it)")
    if len(arrivals) < PROBE_CHUNKS or not done:
        raise Fault(
            f"the stream was cut: {len(arrivals)} of {PROBE_CHUNKS} chunks"
            + ("" if done else ", no [DONE]"),
            ("see the proxy's and the gateway's logs",),
        )
    span = (PROBE_CHUNKS - 1) * PROBE_GAP_S
    spread = arrivals[-1] - arrivals[0]
    summary = f"{len(arrivals)} chunks over {spread:.2f} s, first after {arrivals[0]:.2f} s"
    if spread < STREAMED_SHARE * span:
        raise Fault(
            f"buffered: {summary} (the gateway paces them over {span:.1f} s); replies "
            "arrive all at once at the end",
            fixes.BUFFERING,
        )
    return summary


def chunk_content(payload: str) -> str:
    """The delta text of a `chat.completion.chunk` payload ("" for anything else)."""
    with contextlib.suppress(ValueError, LookupError, TypeError, AttributeError):
        chunk = json.loads(payload)
        text = chunk["choices"][0]["delta"].get("content")
        return text if isinstance(text, str) else ""
    return ""
