"""Fuzzing over the wire: hypothesis' inputs through the real transports of a real gateway.

`tests/flavours/test_fuzz.py` fuzzes the pure decoders; this module sends inputs of the
same kinds (its strategies) to one gateway process (PostgreSQL, Redis), as clients send
them, and checks what each client gets back and what the gateway logs:

    what is sent                                       what must happen
    A. Socket.IO events (python-socketio's client):    every event the gateway handles
      the events the gateway handles, Open WebUI's       (user-join, events:chat, heartbeat,
      others and unknown names, 0 to 3 arguments of     usage) is acked in its shape; the
      any JSON shape, binary attachments, huge           next event is answered, the user's
      numbers, surrogates, NUL, nesting to 700,          events still reach the socket, and
      strings past the 1 MiB frame limit                 it stays connected (below 1 MiB)
    A. raw Engine.IO / Socket.IO frames after a valid  the socket answers a heartbeat and
      handshake: any packet type, id, namespace and      still gets its user's events, or is
      attachment count, reserved event names, cut and    closed; silent only where the
      spliced JSON, nesting to 100,000, invalid UTF-8    protocol says so (an Engine.IO
      in text frames, binary frames, frames past 1 MiB   close, the namespace left, a binary
                                                         packet awaiting its attachments);
                                                         its session gone once it is closed
    B. the body of every REST route that reads JSON    a 2xx, or a 4xx in the route's own
      (Open WebUI, OpenAI, RAGFlow): almost-right        shape (`{"detail"}`, OpenAI's
      objects, any JSON value, cut, spliced and          `{"error"}`, RAGFlow's HTTP 200
      nested text, `\\ud800` and NUL escapes, invalid     `{"code"}` with a client's code);
      UTF-8, UTF-16/32, wrong or no Content-Type         never a 5xx, a dropped connection
                                                         or a stream cut short
    C. frames on Nadoo's and RAGFlow's chat sockets    an error frame for what the flavour
      (Nadoo has no REST body): almost-right frames,     refuses, a question answered to its
      any JSON, cut, spliced, nested, not UTF-8          end, the next frame answered

and, for every input, no "Traceback" and no ERROR line in the gateway's log.  Meanwhile a
bystander user runs one turn after another on its own socket: at the end it has received
every event of each of its replies, nothing of anyone else's, with no stall; the fuzzed
user's socket still gets a whole reply and `/health` answers.

A violation does not stop a run: each is recorded with its input, and the test fails at
its end naming, per kind of violation, the smallest input that showed it and the log
lines it caused.  Each defect this fuzzing found (seven, all fixed: the libraries'
side in `gateway/transports/socketio_guard.py`) has its own test at the end, with the
smallest input; each docstring says what the libraries do on their own.  The module
prints how many inputs each event, route and socket was tried with, and what came of
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import engineio.packet
import pytest
import socketio
import socketio.packet
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import jsonwire
from gateway.commands import Question, Say
from gateway.errors import GatewayError, ProtocolError
from gateway.flavours import nadoo, ragflow
from gateway.transports.socketio_guard import MAX_PACKET_CHARS
from tests.clients import PySocket, completion_of, ended, text_of, turn_body
from tests.flavours.test_fuzz import (
    ASSISTANT,
    CHARS,
    HISTORY,
    INTS,
    JSON_VALUES,
    MESSAGE,
    NADOO_FRAMES,
    OPENAI,
    OPENAI_FIELDS,
    PARAMS,
    QUESTION,
    QUESTION_FIELDS,
    RAGFLOW_FIELDS,
    SIGNAL_FIELDS,
    SOCKET_EVENTS,
    TEXTS,
    WRONG,
    almost,
    frames_of,
    fuzz,  # its hypothesis settings; each use here sets its own count
    nested,
)
from tests.gatewayproc import GatewayProcess, make_token
from tests.services import RedisServer, pg_database

T = TypeVar("T")

SOCKET_EXAMPLES = 600
RAW_EXAMPLES = 150
ROUTE_EXAMPLES = 50
SOCKET_FRAME_EXAMPLES = 100
DEMO = "gateway-demo"
MAX_FRAME = 1024 * 1024  # GATEWAY_MAX_FRAME_BYTES' default
PROBE_S = 5.0  # an answer to a heartbeat, or an event relayed, takes milliseconds
FAILED_GRACE_S = 0.3  # the wait for an answer once the log shows a traceback
FOUND_WAIT_S = 2.0  # the wait for an answer in the tests of defects found, one socket each
ACK_S = 5.0
REQUEST_S = 30.0

TRIED: Counter[str] = Counter()  # inputs sent, per event, frame kind or route
OUTCOMES: Counter[str] = Counter()  # what came of them, where the protocol allows several


@dataclass(frozen=True)
class Finding:
    where: str  # the event, frame kind or route
    what: str  # the kind of violation: a status, an exception's type and message, ...
    shown: str  # the input
    size: int
    log: str  # the gateway's log lines it caused


FOUND: dict[tuple[str, str, str], Finding] = {}  # (test, where, what): the smallest input


def found(test: str, where: str, what: str, shown: str, size: int, log: str = "") -> None:
    key = (test, where, what)
    if key not in FOUND or size < FOUND[key].size:
        FOUND[key] = Finding(where, what, shown, size, log)


def check_found(test: str) -> None:
    mine = [finding for (name, *_), finding in FOUND.items() if name == test]
    lines = [f"{len(mine)} kind(s) of violation; the smallest input of each:"]
    for finding in sorted(mine, key=lambda f: (f.where, f.what)):
        lines.append(f"* {finding.where}: {finding.what}")
        lines.append(f"    input ({finding.size} bytes): {finding.shown[:400]}")
        if finding.log:
            lines += [f"    log: {line}" for line in excerpt(finding.log)]
    assert not mine, "\n".join(lines)


def excerpt(log: str, lines: int = 8) -> list[str]:
    """A log's lines without the frames of its tracebacks."""
    kept = [line[:200] for line in log.splitlines() if line.strip() and not line[0].isspace()]
    return kept[:lines]


@pytest.fixture(scope="module", autouse=True)
def inputs_tried() -> Iterator[None]:
    yield
    print("\nfuzz over the wire: inputs tried")
    for name in sorted(TRIED):
        print(f"  {name}: {TRIED[name]} inputs tried")
    print(f"  total: {sum(TRIED.values())} inputs tried")
    for outcome in sorted(OUTCOMES):
        print(f"  outcome {outcome}: {OUTCOMES[outcome]}")
    floors = {f"socketio {name!r}": SOCKET_EXAMPLES // 20 for name in HANDLED}
    floors |= {"raw frames": RAW_EXAMPLES}
    floors |= {f"rest {route}": ROUTE_EXAMPLES for route in ROUTES}
    floors |= {flavour.name: SOCKET_FRAME_EXAMPLES for flavour in (NADOO, RAGFLOW_SOCKET)}
    short = {name: count for name, count in TRIED.items() if count < floors.get(name, 0)}
    socket_events = sum(count for name, count in TRIED.items() if name.startswith("socketio"))
    if socket_events and socket_events < SOCKET_EXAMPLES:
        short["socketio, all events"] = socket_events
    assert not short, f"tried with fewer inputs than the floor: {short}"


# -- the gateway's log ---------------------------------------------------------------
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Exit)\b.*)$")
ERROR_LINE = re.compile(r"^\S+ \S+ ERROR ([\w.]+): (.*)$", re.M)
FIELDS = re.compile(r' \w+="[^"]*"')  # a log line's key="value" pairs
QUOTED = re.compile(r"b?'(?:[^'\\]|\\.)*'" + r'|b?"(?:[^"\\]|\\.)*"')  # a repr's strings
DIGITS = re.compile(r"\d+")


class LogTail:
    def __init__(self, path: Path) -> None:
        self.path = path

    def size(self) -> int:
        return self.path.stat().st_size

    def since(self, offset: int) -> str:
        with self.path.open("rb") as log:
            log.seek(offset)
            return log.read().decode("utf-8", "replace")


def trouble(text: str) -> str | None:
    """What went wrong in a piece of the log, as a signature: the first ERROR line's
    logger and message, and the last exception (no ids, quoted values or numbers); None
    when it holds neither a traceback nor an ERROR line."""
    error = ERROR_LINE.search(text)
    if "Traceback" not in text and error is None:
        return None
    what = f"{error[1]}: {error[2]}" if error is not None else "a traceback"
    exceptions = [m[1] for line in text.splitlines() if (m := EXCEPTION_LINE.match(line))]
    if exceptions:
        what += f" / {exceptions[-1]}"
    return DIGITS.sub("#", QUOTED.sub("'…'", FIELDS.sub("", what)))[:240]


# -- an event loop for the clients, kept across hypothesis' examples -------------------
class Driver:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-wire")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.run(_cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _cancel_others() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def until(done: Callable[[], bool], timeout_s: float, step_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step_s)
    return True


# -- users, and a bystander ----------------------------------------------------------
def reply_ended(message_id: str, events: list[dict[str, Any]]) -> bool:
    return any(e["message_id"] == message_id and ended(e) for e in events)


@dataclass
class User:
    user_id: str
    name: str
    token: str

    @classmethod
    def make(cls, role: str) -> User:
        user_id = f"fuzz-{role}-{uuid.uuid4().hex[:8]}"
        name = role.capitalize()
        return cls(user_id, name, make_token(user_id, name=name))

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Bystander:
    """A second user's socket, turn after turn while the fuzzing runs."""

    wire: Wire
    user: User = field(default_factory=lambda: User.make("bystander"))
    sock: PySocket | None = None
    whole: list[float] = field(default_factory=list)  # when each whole reply ended
    broken: list[str] = field(default_factory=list)
    mine: set[str] = field(default_factory=set)  # its message ids
    task: asyncio.Task[None] | None = None
    stop: bool = False

    async def start(self) -> None:
        self.sock = await PySocket().connect(self.wire.gw.url, self.user.token)
        # Joined before the first turn, as the web app is (its `user-join` after the
        # connect): the connect is acked before the socket joins its user's room,
        # and a reply begun in between reaches it as a snapshot, then deltas.
        joined = await self.sock.client.call("user-join", {"auth": {"token": self.user.token}})
        assert joined["id"] == self.user.user_id, joined
        self.task = asyncio.create_task(self._turns())

    async def _turns(self) -> None:
        assert self.sock is not None
        turn = 0
        while not self.stop:
            turn += 1
            body = turn_body(self.sock.sid, f"bystander turn {turn}", DEMO)
            message_id = body["id"]
            self.mine.add(message_id)
            try:
                await self.wire.post("/api/chat/completions", self.user, body)
                await self.sock.wait_until(partial(reply_ended, message_id), timeout_s=20)
                completion = completion_of(self.sock.events, message_id)
                if text_of(self.sock.events, message_id) != completion["content"]:
                    self.broken.append(f"turn {turn}: deltas do not make its text")
                else:
                    self.whole.append(time.monotonic())
            except Exception as exc:  # recorded, and asserted on at the end
                self.broken.append(f"turn {turn}: {type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.5)

    async def finish(self) -> None:
        self.stop = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)

    def foreign(self) -> list[str]:
        """The message ids of events that reached it and are not of its replies."""
        assert self.sock is not None
        return sorted({e["message_id"] for e in self.sock.events} - self.mine)


# -- the gateway, and what the tests need of it ----------------------------------------
class Wire:
    def __init__(self, gw: GatewayProcess, driver: Driver) -> None:
        self.gw = gw
        self.driver = driver
        self.log = LogTail(gw.log_path)
        self.alice = User.make("alice")  # Socket.IO events
        self.carol = User.make("carol")  # raw frames
        self.dave = User.make("dave")  # REST bodies
        self.erin = User.make("erin")  # REST: the routes that delete what they are given
        self.frank = User.make("frank")  # the defects found, one by one
        self.gina = User.make("gina")  # Nadoo's and RAGFlow's sockets
        self.probes = 0
        self.ids: dict[str, str] = {"password": uuid.uuid4().hex}
        self.http: aiohttp.ClientSession
        self.alice_sock: PySocket
        self.dave_sock: PySocket
        self.bystander = Bystander(self)
        self.relayed = 0

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=8),
            timeout=aiohttp.ClientTimeout(total=REQUEST_S),
        )
        history = {
            "currentId": "m1",
            "messages": {"m1": {"id": "m1", "role": "user", "content": "hi", "childrenIds": []}},
        }
        chat = {"chat": {"title": "fuzz", "history": history}}
        chats = [(self.alice, "alice"), (self.carol, "carol"), (self.dave, "dave")]
        chats += [(self.frank, "frank")]
        for user, key in [*chats, (self.dave, "target")]:
            self.ids[f"{key}_chat"] = (await self.post("/api/v1/chats/new", user, chat))["id"]
        for key in ("assistant", "assistant2"):
            made = await self.post("/ragflow/api/v1/chats", self.dave, {"name": key})
            self.ids[key] = made["data"]["id"]
        made = await self.post("/ragflow/api/v1/chats", self.gina, {"name": "gina"})
        self.ids["gina_assistant"] = made["data"]["id"]
        path = f"/ragflow/api/v1/chats/{self.ids['assistant']}/sessions"
        self.ids["session"] = (await self.post(path, self.dave, {"name": "s"}))["data"]["id"]
        self.alice_sock = await PySocket().connect(self.gw.url, self.alice.token)
        self.dave_sock = await PySocket().connect(self.gw.url, self.dave.token)
        await self.bystander.start()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.bystander.finish()
        for sock in (self.alice_sock, self.dave_sock, self.bystander.sock):
            if sock is not None:
                with contextlib.suppress(Exception):
                    await sock.close()
        await self.http.close()

    async def post(self, path: str, user: User, body: Any) -> Any:
        async with self.http.post(self.gw.url + path, json=body, headers=user.bearer) as resp:
            answer = await resp.json()
            assert resp.status == 200, (path, resp.status, answer)
            return answer

    async def reconnect_alice(self) -> None:
        with contextlib.suppress(Exception):
            await self.alice_sock.close()
        self.alice_sock = await PySocket().connect(self.gw.url, self.alice.token)

    async def relay(self, user: User, chat: str) -> str:
        """An Open WebUI message event to every live connection of `user`; its marker."""
        self.relayed += 1
        marker = f"relay-{self.relayed}"
        path = f"/api/v1/chats/{self.ids[chat]}/messages/m1/event"
        await self.post(path, user, {"type": "fuzz:probe", "data": {"marker": marker}})
        return marker

    async def still_writes(self, sock: PySocket, user: User, chat: str) -> bool:
        """Whether an event of `user` still reaches `sock`."""
        marker = await self.relay(user, chat)
        return await until(
            lambda: any(e["data"] == {"marker": marker} for e in sock.events[-50:]), PROBE_S
        )


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    """One gateway for the module, on PostgreSQL and a Redis of its own, the demo model
    its only model; no message rate limit and no per-address cap (the fuzzing sends
    hundreds of events a second from one address, each a case of its own)."""
    redis = RedisServer().start()
    try:
        with pg_database() as database_url:
            env = {
                "DATABASE_URL": database_url,
                "WEBSOCKET_MANAGER": "redis",
                "REDIS_URL": redis.url,
                "GATEWAY_MAX_MESSAGES_PER_S": "",
                "GATEWAY_MAX_CONNECTIONS_PER_ADDRESS": "",
            }
            gw = GatewayProcess(tmp_path_factory.mktemp("fuzz-wire"), env).start()
            driver = Driver()
            wire = Wire(gw, driver)
            try:
                driver.run(wire.open())
                yield wire
            finally:
                with contextlib.suppress(Exception):
                    driver.run(wire.close())
                driver.close()
                gw.stop()
    finally:
        redis.stop()


# -- A. Socket.IO events from python-socketio's client --------------------------------
HANDLED = ("user-join", "events:chat", "heartbeat", "usage")
# What Open WebUI's web app and server also know; the gateway handles none of them.
OPEN_WEBUI_EVENTS = (
    "join-channels",
    "join-note",
    "channel-events",
    "events:channel",
    "events",
    "chat-events",
    "ydoc:document:join",
    "ydoc:document:leave",
    "ydoc:document:update",
    "ydoc:document:state",
    "ydoc:awareness:update",
)
EVENT_NAMES = st.one_of(
    st.sampled_from(HANDLED),
    st.sampled_from(HANDLED),
    st.sampled_from(OPEN_WEBUI_EVENTS),
    TEXTS,
)
ALICE_TOKEN = "@alice-token@"  # replaced by her real token when sent


def nest(depth: int, inner: Any) -> Any:
    value = inner
    for _ in range(depth):
        value = [value]
    return value


SOCKET_DATA = st.one_of(
    SOCKET_EVENTS.map(lambda frame: frame[1]),
    SOCKET_EVENTS.map(lambda frame: frame[1]),
    almost({"auth": {"token": ALICE_TOKEN}}, {"auth": WRONG}),
    almost(
        {"chat_id": "@dave_chat@", "data": {"type": "join"}},
        {"chat_id": TEXTS, "data": almost({"type": "last_read_at"}, SIGNAL_FIELDS)},
    ),
    st.tuples(st.integers(10, 700), JSON_VALUES).map(lambda pair: nest(*pair)),
    st.binary(max_size=64),
    st.dictionaries(TEXTS, st.binary(max_size=16), max_size=3),
    st.sampled_from([400_000, MAX_FRAME + 100]).map(lambda n: "a" * n),
)
SOCKET_ARGS = st.one_of(
    SOCKET_DATA.map(lambda data: [data]),
    SOCKET_DATA.map(lambda data: [data]),
    SOCKET_DATA.map(lambda data: [data]),
    st.lists(SOCKET_DATA, max_size=3),
)


def substituted(value: Any, ids: dict[str, str]) -> Any:
    """`value` with each placeholder string ("@name@") replaced by its id."""
    if isinstance(value, str) and value.startswith("@") and value.endswith("@"):
        return ids.get(value.strip("@"), value)
    if isinstance(value, list):
        return [substituted(item, ids) for item in value]
    if isinstance(value, dict):
        return {substituted(k, ids): substituted(v, ids) for k, v in value.items()}
    return value


def encoded_size(value: Any) -> int:
    """About the bytes of a Socket.IO packet carrying `value` (attachments apart)."""
    text = json.dumps(value, separators=(",", ":"), default=lambda raw: len(raw))
    return len(text.encode("utf-8", "surrogatepass"))


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 400 else f"{text[:200]} ...({len(text)} chars)... {text[-100:]}"


def ack_problem(name: str, data: list[Any], ack: tuple[Any, ...], alice: User) -> str | None:
    """What is wrong with an event's ack (None: nothing)."""
    if ack == ():
        return None
    if (
        len(ack) == 1
        and isinstance(ack[0], dict)
        and ack[0].get("error", {}).get("code") == "too_large"
    ):
        # Refused unread (`MAX_PACKET_CHARS`): only an event that long, as the
        # client writes it (`42<ack id>` and the JSON, escaped to ASCII).
        packet = encoded_size([name, *data]) + 12
        long = packet > MAX_PACKET_CHARS
        return None if long else f"refused as too large: {shown(data)[:120]}"
    if name == "user-join":
        joined = {"id": alice.user_id, "name": alice.name}
        token = data[0].get("auth", {}) if len(data) == 1 and isinstance(data[0], dict) else {}
        if ack == (joined,) and isinstance(token, dict) and token.get("token") == alice.token:
            return None
    if name == "events:chat" and len(ack) == 1:
        answer = ack[0]
        if isinstance(answer, bool):
            return None
        if (
            isinstance(answer, dict)
            and set(answer) == {"resumed", "unknown"}
            and all(isinstance(ids, list) for ids in answer.values())
        ):
            return None
        if (
            isinstance(answer, dict)
            and set(answer) == {"error"}
            and answer["error"].get("code") == "bad_resume"
            and isinstance(answer["error"].get("message"), str)
        ):
            return None  # a resume of the wrong shape, told
    return f"an ack of the wrong shape: {shown(ack)[:120]}"


async def emit_one(wire: Wire, name: str, args: list[Any]) -> None:
    test = "socketio"
    where = f"{name!r}" if name in HANDLED or name in OPEN_WEBUI_EVENTS else "<another name>"
    TRIED[f"socketio {where}"] += 1
    data = substituted(args, {**wire.ids, "alice-token": wire.alice.token})
    size = encoded_size([name, *data])
    what_shown = shown((name, *args))
    since = wire.log.size()
    client = wire.alice_sock.client
    acks: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

    def on_ack(*answer: Any) -> None:
        if not acks.done():
            acks.set_result(answer)

    handled = name in HANDLED
    probed: str | None = None
    try:
        await client.emit(name, tuple(data), callback=on_ack if handled else None)
        if size > MAX_FRAME:
            # Past the frame limit Engine.IO closes the connection.
            if await until(lambda: not client.connected, PROBE_S):
                probed = "answered"
            else:
                probed = "a packet past 1 MiB was kept, not refused"
        else:
            await client.call("heartbeat", 0, timeout=PROBE_S)
            probed = "answered"
    except socketio.exceptions.TimeoutError:
        probed = "the next event was not answered"
    except socketio.exceptions.SocketIOError as exc:
        probed = f"the next event was refused: {type(exc).__name__}"
    if handled and client.connected:
        # The ack may come after the probe's (a handler that reads the store); a
        # handler that failed never sends one: stop waiting once the log says so.
        await until(lambda: acks.done() or "Traceback" in wire.log.since(since), ACK_S, 0.02)
    log = wire.log.since(since)
    if not client.connected:
        if size <= MAX_FRAME:
            found(test, where, "the socket was disconnected", what_shown, size, log)
        OUTCOMES["socketio: disconnected (a packet past 1 MiB)"] += size > MAX_FRAME
        await wire.reconnect_alice()
    elif probed != "answered":
        found(test, where, str(probed), what_shown, size, log)
    elif not await wire.still_writes(wire.alice_sock, wire.alice, "alice_chat"):
        found(test, where, "the socket no longer gets its user's events", what_shown, size, log)
    if handled and client.connected:
        if not acks.done():
            found(test, where, "no ack", what_shown, size, log)
        elif (problem := ack_problem(name, data, acks.result(), wire.alice)) is not None:
            found(test, where, problem, what_shown, size, log)
    if (signature := trouble(log)) is not None:
        found(test, where, signature, what_shown, size, log)


@settings(fuzz, max_examples=SOCKET_EXAMPLES)
@given(name=EVENT_NAMES, args=SOCKET_ARGS)
def test_socketio_events(wire: Wire, name: str, args: list[Any]) -> None:
    wire.driver.run(emit_one(wire, name, args))


def test_socketio_events_found_nothing(wire: Wire) -> None:
    """The violations `test_socketio_events` recorded, the smallest input of each."""
    check_found("socketio")


# -- A. raw Engine.IO / Socket.IO frames ------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One websocket frame: text (sent as bytes when it is not UTF-8), or binary."""

    data: str | bytes
    binary: bool = False

    def kind(self) -> str:
        if self.binary:
            return "binary"
        if isinstance(self.data, bytes):
            return "text, not UTF-8"
        return "text"


def text_frame(text: str) -> Frame:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Frame(text.encode("utf-8", "surrogatepass"))
    return Frame(text)


# Raw packets may name what python-socketio reserves for itself.
RESERVED_NAMES = ("connect", "disconnect", "disconnecting", "connect_error", "message")
RESERVED = st.sampled_from(RESERVED_NAMES)
EVENT_ARRAYS = st.tuples(
    EVENT_NAMES | RESERVED,
    st.lists(SOCKET_DATA.filter(lambda d: not isinstance(d, bytes)), max_size=2),
).map(lambda pair: [pair[0], *pair[1]])
SIO_PAYLOADS = st.one_of(
    EVENT_ARRAYS.map(lambda array: json.dumps(array, default=len)),
    frames_of(EVENT_ARRAYS.map(lambda array: json.loads(json.dumps(array, default=len)))),
    nested(),
    st.sampled_from(["", "[]", "{}", "[1]", '["x"', "null", '"x"', "[[]]"]),
)
SIO_HEADS = st.tuples(
    st.sampled_from("0123456") | st.sampled_from(["7", "9", "x", "", "-", " "]),
    st.sampled_from(["", "", "", "0-", "1-", "2-", "-", "99999999999999999999-"]),
    st.sampled_from(["", "", "", "/", "/,", "/nope,", "/\ud800,"]),
    st.sampled_from(["", "", "7", "0", "-1", "9" * 30]),
).map("".join)
EIO_TYPES = st.sampled_from(["4", "4", "4", "4", "0", "1", "2", "3", "5", "6", "7", "b", ""])
TEXT_PACKETS = st.one_of(
    st.tuples(EIO_TYPES, SIO_HEADS, SIO_PAYLOADS).map("".join),
    st.tuples(st.just("42"), SIO_PAYLOADS).map("".join),
    st.text(CHARS, max_size=12),
    st.sampled_from(["2", "2probe", "3", "5", "6", "40", "41", "4", ""]),
    st.just("42" + json.dumps(["heartbeat", "a" * (MAX_FRAME + 10)])),
)
FRAMES = st.one_of(
    TEXT_PACKETS.map(text_frame),
    TEXT_PACKETS.map(text_frame),
    st.binary(max_size=40).map(lambda raw: Frame(raw, binary=True)),
    st.binary(min_size=1, max_size=40).map(lambda raw: Frame(raw)),  # invalid UTF-8, mostly
    st.tuples(st.sampled_from(["42", "4"]), st.binary(max_size=20)).map(
        lambda pair: Frame(pair[0].encode() + pair[1] + b"\xff")
    ),
)
FRAME_LISTS = st.lists(FRAMES, min_size=1, max_size=3)


ENGINEIO_FROM_CLIENTS = (
    engineio.packet.MESSAGE,
    engineio.packet.PING,
    engineio.packet.PONG,
    engineio.packet.NOOP,
)


def verdict(frames: list[Frame]) -> str:
    """What python-socketio's own parsers make of these frames: 'quiet' when the protocol
    itself leaves a heartbeat after them unanswered (the client closed the Engine.IO
    session, left the namespace, or a binary packet still waits for attachments: the
    heartbeat becomes one), 'well-formed' when each is a packet a client may send,
    'malformed' otherwise."""
    pending, well_formed = 0, True
    for frame in frames:
        if isinstance(frame.data, bytes) and not frame.binary:
            well_formed = False  # not UTF-8: no Engine.IO packet at all
            continue
        try:
            packet = engineio.packet.Packet(encoded_packet=frame.data)
        except Exception:
            well_formed = False
            continue
        if packet.packet_type == engineio.packet.CLOSE:
            return "quiet"
        well_formed &= packet.packet_type in ENGINEIO_FROM_CLIENTS
        well_formed &= len(frame.data) <= MAX_FRAME
        if packet.packet_type != engineio.packet.MESSAGE:
            continue
        if pending:
            pending -= 1
            continue
        try:
            sio = socketio.packet.Packet(encoded_packet=packet.data)
        except Exception:
            well_formed = False
            continue
        if sio.packet_type == socketio.packet.DISCONNECT and sio.namespace in (None, "/"):
            return "quiet"
        if sio.packet_type in (socketio.packet.BINARY_EVENT, socketio.packet.BINARY_ACK):
            pending = sio.attachment_count
            well_formed &= pending > 0
        if sio.packet_type in (socketio.packet.EVENT, socketio.packet.BINARY_EVENT):
            event = sio.data[0] if isinstance(sio.data, list) and sio.data else None
            well_formed &= isinstance(event, str) and event not in RESERVED_NAMES
        well_formed &= sio.packet_type != socketio.packet.CONNECT_ERROR
    if pending:
        return "quiet"
    return "well-formed" if well_formed else "malformed"


def raw_url(wire: Wire) -> str:
    return f"ws://127.0.0.1:{wire.gw.port}/ws/socket.io/?EIO=4&transport=websocket"


async def raw_connect(wire: Wire, user: User | None = None) -> Any:
    """A websocket through Engine.IO's and Socket.IO's handshakes, as carol."""
    ws = await websockets.connect(
        raw_url(wire),
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=10,
        close_timeout=1,
    )
    opened = await asyncio.wait_for(ws.recv(), PROBE_S)
    assert isinstance(opened, str) and opened.startswith("0{"), opened
    await ws.send("40" + json.dumps({"token": (user or wire.carol).token}))
    connected = await asyncio.wait_for(ws.recv(), PROBE_S)
    assert isinstance(connected, str) and connected.startswith('40{"sid"'), connected
    return ws


async def answered(
    ws: Any, wanted: Callable[[str | bytes], bool], timeout_s: float, failed: Callable[[], bool]
) -> str:
    """'answered', 'closed' or 'silent': whether a frame `wanted` came in time.  Once
    `failed()` (the log shows a traceback), a short grace instead of the whole wait."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                if wanted(await asyncio.wait_for(ws.recv(), 0.05)):
                    return "answered"
                continue
            if failed():
                deadline = min(deadline, time.monotonic() + FAILED_GRACE_S)
    except websockets.ConnectionClosed:
        return "closed"
    return "silent"


async def send_raw(wire: Wire, frames: list[Frame]) -> None:
    test = "raw"
    kinds = "+".join(frame.kind() for frame in frames)
    where = "raw frames"
    TRIED["raw frames"] += 1
    OUTCOMES[f"raw frames of kind {kinds}"] += 1
    size = sum(len(frame.data) for frame in frames)
    sent = [frame.data if not frame.binary else ("binary", frame.data) for frame in frames]
    what_shown = shown(sent)
    ws = await raw_connect(wire)
    since = wire.log.size()

    def failed() -> bool:
        return "Traceback" in wire.log.since(since)

    outcome = "closed"
    made_of = verdict(frames)
    try:
        for frame in frames:
            await ws.send(frame.data, text=not frame.binary)
        if made_of == "quiet":
            outcome = "quiet"
        else:
            await ws.send('4291["heartbeat",0]')
            outcome = await answered(ws, lambda f: f == "4391[]", PROBE_S, failed)
        if outcome == "answered":
            # And its writer: an event of its user still reaches it.
            marker = await wire.relay(wire.carol, "carol_chat")
            outcome = await answered(ws, lambda f: marker in str(f), PROBE_S, failed)
            if outcome != "answered":
                found(test, where, f"the socket's writer was {outcome}", what_shown, size)
    except websockets.ConnectionClosed:
        outcome = "closed"
    finally:
        if outcome == "silent":
            ws.transport.abort()  # no close handshake with what does not answer
        else:
            await ws.close()
    OUTCOMES[f"raw: {outcome}"] += 1
    log = wire.log.since(since)
    if outcome == "silent":
        found(test, where, "open, but the next frame gets no answer", what_shown, size, log)
    elif outcome == "closed" and made_of == "well-formed":
        found(test, where, "well-formed packets closed the socket", what_shown, size, log)
    if (signature := trouble(log)) is not None:
        found(test, where, signature, what_shown, size, log)


@settings(fuzz, max_examples=RAW_EXAMPLES)
@given(frames=FRAME_LISTS)
def test_raw_socketio_frames(wire: Wire, frames: list[Frame]) -> None:
    wire.driver.run(send_raw(wire, frames))


def test_raw_socketio_frames_found_nothing(wire: Wire) -> None:
    """The violations `test_raw_socketio_frames` recorded, the smallest input of each;
    and every socket it opened is gone (each closed, or cut, by its client)."""
    left = wire.driver.run(sockets_settled(wire, wire.carol, 0, timeout_s=5))
    if left:
        found(
            "raw", "raw frames", f"{left} socket(s) still open 5 s after their clients left", "", 0
        )
    check_found("raw")


# -- B. REST bodies ---------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with placeholders ("@target_chat@") for the ids made at the start
    shape: str  # its errors: "detail" (Open WebUI), "openai" or "ragflow"
    objects: st.SearchStrategy[Any]
    user: str = "dave"  # "erin" for what deletes, "" for no token
    to_sockets: bool = False  # it sends events to the user's sockets

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


DEMO_ASK = {"model": DEMO, "messages": [MESSAGE], "stream": True}
ASKS = almost(DEMO_ASK, OPENAI_FIELDS) | almost(OPENAI, OPENAI_FIELDS)
TURN_MESSAGE = {"id": "u9", "role": "user", "content": "hi", "parentId": "m1"}
TURN = {**DEMO_ASK, "chat_id": "@target_chat@", "id": "a9", "parent_id": "m1"}
TURN["user_message"] = TURN_MESSAGE
TURNS = almost(
    TURN,
    {
        **OPENAI_FIELDS,
        "chat_id": st.sampled_from(["@target_chat@", "temporary:x", "local:y", ""]) | TEXTS,
        "id": TEXTS,
        "session_id": TEXTS | st.just("@alice_sid@"),
        "parent_id": TEXTS | st.none(),
        "user_message": almost(TURN_MESSAGE, {"id": TEXTS, "content": TEXTS}),
        "message_ids": st.lists(
            almost(
                {"model_id": DEMO, "message_id": "a9", "modelIdx": 0},
                {"model_id": TEXTS, "message_id": TEXTS, "modelIdx": INTS},
            ),
            max_size=2,
        ),
        "params": almost({"temperature": 0.5}, PARAMS),
        "background_tasks": WRONG | st.fixed_dictionaries({"title_generation": st.booleans()}),
    },
)
CHATS = almost(
    {"chat": {"title": "t", "history": {"messages": {}, "currentId": None}}},
    {
        "chat": almost(
            {"title": "t", "history": {"messages": {}, "currentId": None}},
            {"title": TEXTS, "history": HISTORY, "messages": WRONG, "tags": WRONG},
        ),
        "folder_id": TEXTS,
    },
)
NAMES = almost({"name": "t"}, {"name": TEXTS})
IDS = almost({"ids": ["x"]}, {"ids": st.lists(TEXTS | WRONG, max_size=3)})
CREDENTIALS = almost(
    {"email": "fuzz@example.com", "password": "@password@", "name": "F"},
    {"email": TEXTS, "password": TEXTS, "name": TEXTS, "role": TEXTS},
)
CHAT = "/api/v1/chats/@target_chat@"
RAGFLOW = "/ragflow/api/v1/chats"
ROUTES = [
    Route("POST", "/api/chat/completions", "detail", ASKS | TURNS, to_sockets=True),
    Route("POST", "/api/v1/chat/completions", "detail", ASKS | TURNS, to_sockets=True),
    Route("POST", "/v1/chat/completions", "openai", ASKS),
    Route("POST", "/api/v1/chats/new", "detail", CHATS),
    Route("POST", "/api/v1/chats/import", "detail", CHATS),
    Route(
        "POST",
        "/api/v1/chats/tags",
        "detail",
        almost({"name": "t", "skip": 0, "limit": 5}, {"name": TEXTS, "skip": INTS, "limit": INTS}),
    ),
    Route("POST", CHAT, "detail", CHATS),
    Route(
        "POST",
        f"{CHAT}/messages/m1",
        "detail",
        almost(
            {"content": "hi", "role": "user"},
            {"content": TEXTS, "role": TEXTS, "parentId": TEXTS, "childrenIds": WRONG},
        ),
    ),
    Route(
        "POST",
        f"{CHAT}/messages/m1/event",
        "detail",
        almost({"type": "status", "data": {"done": True}}, {"type": TEXTS, "data": JSON_VALUES}),
        to_sockets=True,
    ),
    Route("POST", f"{CHAT}/clone", "detail", almost({"title": "copy"}, {"title": TEXTS})),
    Route("POST", f"{CHAT}/folder", "detail", almost({"folder_id": None}, {"folder_id": TEXTS})),
    Route("PATCH", f"{CHAT}/params", "detail", almost({"temperature": 0.5}, PARAMS)),
    Route("POST", f"{CHAT}/tags", "detail", NAMES),
    Route("DELETE", f"{CHAT}/tags", "detail", NAMES),
    Route(
        "POST",
        "/api/v1/users/user/settings/update",
        "detail",
        almost({"ui": {"theme": "dark"}}, {"ui": JSON_VALUES, "system": TEXTS}),
    ),
    *(
        Route(
            "POST",
            path,
            "detail",
            almost(
                {"chat_id": "@target_chat@", "id": "m1", "messages": []},
                {"chat_id": TEXTS, "messages": WRONG, "model": TEXTS},
            ),
        )
        for path in ("/api/chat/completed", "/api/v1/chat/completed")
    ),
    Route("POST", "/api/v1/auths/signin", "detail", CREDENTIALS, user=""),
    Route("POST", "/api/v1/auths/signup", "detail", CREDENTIALS, user=""),
    Route("POST", "/api/v1/auths/add", "detail", CREDENTIALS),
    Route(
        "POST",
        "/api/v1/auths/update/timezone",
        "detail",
        almost({"timezone": "Europe/Paris"}, {"timezone": TEXTS}),
    ),
    Route(
        "POST",
        RAGFLOW,
        "ragflow",
        ASSISTANT | almost({"name": "a", "llm": {"model_name": DEMO}}, {"name": TEXTS}),
    ),
    Route("PUT", f"{RAGFLOW}/@assistant@", "ragflow", ASSISTANT),
    Route("DELETE", RAGFLOW, "ragflow", IDS, user="erin"),
    Route(
        "POST",
        f"{RAGFLOW}/@assistant@/sessions",
        "ragflow",
        almost({"name": "s", "user_id": "u"}, {"name": TEXTS, "user_id": TEXTS}),
    ),
    Route("DELETE", f"{RAGFLOW}/@assistant2@/sessions", "ragflow", IDS),
    Route(
        "PUT",
        f"{RAGFLOW}/@assistant@/sessions/@session@",
        "ragflow",
        almost({"name": "s2"}, {"name": TEXTS, "message": WRONG, "reference": WRONG}),
    ),
    Route(
        "POST",
        f"{RAGFLOW}/@assistant@/completions",
        "ragflow",
        almost({"question": "hi", "session_id": "@session@", "stream": True}, QUESTION_FIELDS),
    ),
    Route("POST", "/ragflow/api/v1/chats_openai/@assistant@/chat/completions", "ragflow", ASKS),
]

UNICODE_ENCODINGS = ["utf-16", "utf-16-be", "utf-32-le", "utf-8-sig"]


def utf8(text: str, errors: str) -> bytes:
    """`text` as UTF-8; its lone surrogates as raw bytes or CESU-8 (neither valid UTF-8)."""
    try:
        return text.encode("utf-8", errors)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def raw_bodies(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        objects.map(lambda value: json.dumps(value).encode()),  # \\ud800 and \\u0000 escapes
        objects.map(lambda value: utf8(jsonwire.dumps(value), "surrogatepass")),
        st.tuples(frames_of(objects), st.sampled_from(["surrogatepass", "surrogateescape"])).map(
            lambda pair: utf8(*pair)
        ),
        st.tuples(objects.map(json.dumps), st.sampled_from(UNICODE_ENCODINGS)).map(
            lambda pair: pair[0].encode(pair[1])
        ),
        st.sampled_from([b"", b" ", b"\x00", b"{}\x00", b'{"a":1}{"a":2}', b"\xef\xbb\xbf{}"]),
        st.binary(max_size=64),
    )


CONTENT_TYPES = st.sampled_from(
    [
        *["application/json"] * 8,
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "",
        None,
    ]
)


def answer_problem(shape: str, status: int, content_type: str, raw: bytes) -> str | None:
    """What is wrong with a route's answer to a body (None: nothing)."""
    if status >= 500:
        return f"HTTP {status}"
    if content_type == "text/event-stream":
        return stream_problem(raw) if status == 200 else f"an event stream with HTTP {status}"
    try:
        answer = json.loads(raw)
    except ValueError:
        return f"HTTP {status}, not JSON"
    if shape == "ragflow":
        if isinstance(answer, dict) and answer.get("object") == "chat.completion":
            return None if status == 200 else f"HTTP {status} with a completion"
        if not isinstance(answer, dict) or type(answer.get("code")) is not int:
            return f"HTTP {status}, not RAGFlow's shape"
        if answer["code"] in (100, 500):  # EXCEPTION_ERROR, SERVER_ERROR: ours
            return f"RAGFlow code {answer['code']} (the server's fault)"
        return None if status in (200, 404, 405) else f"HTTP {status}"
    if status < 400:
        return None
    if shape == "openai":
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return None
        return f"HTTP {status}, not OpenAI's error shape"
    if isinstance(answer, dict) and isinstance(answer.get("detail"), str):
        return None
    return f"HTTP {status}, not Open WebUI's error shape"


def stream_problem(raw: bytes) -> str | None:
    lines = raw.decode("utf-8", "replace").splitlines()
    data = [line[5:].strip() for line in lines if line.startswith("data:")]
    if data and data[-1] == "[DONE]":
        return None
    with contextlib.suppress(ValueError):
        if data and json.loads(data[-1]) == {"code": 0, "message": "", "data": True}:
            return None
    return "an event stream cut short"


async def send_body(wire: Wire, route: Route, body: bytes, content_type: str | None) -> None:
    test = "rest"
    where = str(route)
    TRIED[f"rest {route}"] += 1
    ids = {**wire.ids, "alice_sid": wire.alice_sock.sid}
    path = route.path
    for key, value in ids.items():
        body = body.replace(f"@{key}@".encode(), value.encode())
        path = path.replace(f"@{key}@", value)
    user = {"dave": wire.dave, "erin": wire.erin}.get(route.user)
    headers = dict(user.bearer) if user is not None else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    what_shown = f"Content-Type {content_type!r}, body {shown(body)}"
    since = wire.log.size()
    try:
        async with wire.http.request(
            route.method,
            wire.gw.url + path,
            data=body,
            headers=headers,
            skip_auto_headers=() if content_type is not None else ("Content-Type",),
        ) as resp:
            status, answer_type, raw = resp.status, resp.content_type, await resp.read()
    except TimeoutError:
        found(test, where, f"no answer in {REQUEST_S:.0f} s", what_shown, len(body))
    except aiohttp.ClientError as exc:
        found(test, where, f"connection dropped: {type(exc).__name__}", what_shown, len(body))
    else:
        OUTCOMES[f"rest: HTTP {status}"] += 1
        problem = answer_problem(route.shape, status, answer_type, raw)
        if problem is not None:
            answer_shown = f"{what_shown}; answer {shown(raw[:300])}"
            found(test, where, problem, answer_shown, len(body), wire.log.since(since))
    if route.to_sockets:
        await check_dave_socket(wire, where, what_shown, len(body))
    if (signature := trouble(wire.log.since(since))) is not None:
        found(test, where, signature, what_shown, len(body), wire.log.since(since))


async def check_dave_socket(wire: Wire, where: str, what_shown: str, size: int) -> None:
    """The REST user's socket still gets its events (after a relay of any data to it)."""
    sock = wire.dave_sock
    if not await wire.still_writes(sock, wire.dave, "dave_chat") or not sock.client.connected:
        found("rest", where, "the user's socket no longer gets events", what_shown, size)
        with contextlib.suppress(Exception):
            await sock.close()
        wire.dave_sock = await PySocket().connect(wire.gw.url, wire.dave.token)


@pytest.mark.parametrize("route", ROUTES, ids=str)
@settings(fuzz, max_examples=ROUTE_EXAMPLES)
@given(data=st.data())
def test_rest_bodies(wire: Wire, route: Route, data: st.DataObject) -> None:
    body = data.draw(raw_bodies(route.objects), label="body")
    content_type = data.draw(CONTENT_TYPES, label="content_type")
    wire.driver.run(send_body(wire, route, body, content_type))


def test_rest_bodies_found_nothing(wire: Wire) -> None:
    """The violations `test_rest_bodies` recorded, the smallest input of each."""
    check_found("rest")


# -- C. Nadoo's and RAGFlow's chat sockets ----------------------------------------------
@dataclass(frozen=True)
class SocketFlavour:
    name: str
    decode: Callable[[str], Any]  # the flavour's pure decoder: what the gateway runs
    probe: Callable[[int], str]  # a frame whose answer is known
    answers_probe: Callable[[dict[str, Any], int], bool]
    is_error: Callable[[dict[str, Any]], bool]
    ends_reply: Callable[[dict[str, Any]], bool]  # the last frame of a reply (or its error)


NADOO = SocketFlavour(
    "nadoo chat socket",
    nadoo.NadooFlavour("chat", "fuzz").decode,
    lambda n: '{"type":"ping"}',
    lambda frame, n: frame.get("type") == "pong",
    lambda frame: frame.get("type") == "error",
    lambda frame: frame.get("type") in ("response_end", "error"),
)
RAGFLOW_SOCKET = SocketFlavour(
    "ragflow chat socket",
    ragflow.RagflowSocketFlavour("delta", None).decode,
    lambda n: f'{{"type":"probe-{n}"}}',
    lambda frame, n: frame.get("code") != 0 and f"probe-{n}'" in str(frame.get("message")),
    lambda frame: frame.get("code") != 0,
    lambda frame: frame.get("code") != 0 or frame.get("data") is True,
)
GINA_QUESTION = {"type": "chat", "chat_id": "@gina_assistant@", "question": "hi", "stream": True}
SOCKET_FRAMES = {
    NADOO.name: st.one_of(
        NADOO_FRAMES,
        frames_of(almost({"type": "chat", "content": "hi"}, {"content": TEXTS})),
    ),
    RAGFLOW_SOCKET.name: st.one_of(
        frames_of(almost({"type": "chat", "chat_id": "as1", **QUESTION}, RAGFLOW_FIELDS)),
        frames_of(almost(GINA_QUESTION, RAGFLOW_FIELDS)),
        frames_of(almost({"type": "resume", "message_id": "m1", "after": 3}, RAGFLOW_FIELDS)),
    ),
}


def socket_url(wire: Wire, flavour: SocketFlavour) -> str:
    if flavour is NADOO:
        return f"ws://127.0.0.1:{wire.gw.port}/ws/chat/fuzz-{uuid.uuid4().hex[:8]}"
    return f"ws://127.0.0.1:{wire.gw.port}/v1/ws/chat"


async def flavour_socket(wire: Wire, flavour: SocketFlavour) -> Any:
    """A new socket of the flavour, gina's."""
    ws = await websockets.connect(
        socket_url(wire, flavour),
        additional_headers=wire.gina.bearer,
        compression=None,
        max_size=None,
        ping_interval=None,
        close_timeout=1,
    )
    if flavour is NADOO:
        assert json.loads(await asyncio.wait_for(ws.recv(), PROBE_S))["type"] == "connected"
    return ws


async def send_frame(wire: Wire, flavour: SocketFlavour, text: str) -> None:
    """One frame, then the probe, on a new socket: every frame the socket sends back is
    a JSON object; a frame the flavour refuses is answered with its error frame; a
    question it takes is answered to its end; the probe is answered (or the socket is
    closed, for a frame that is not UTF-8)."""
    test = where = flavour.name
    TRIED[where] += 1
    text = substituted_text(text, wire.ids)
    frame = text_frame(text)
    what_shown = shown(frame.data)
    size = len(frame.data)
    try:
        expected: Any = flavour.decode(text) if isinstance(frame.data, str) else None
    except GatewayError as exc:
        expected = exc
    # Refused: an error frame (its code is the decoder's, checked in test_fuzz.py; a
    # frame nested past the parser's limit may be refused for that first).
    refused = isinstance(expected, ProtocolError)
    replying = isinstance(expected, Say | Question)
    wire.probes += 1
    probe = wire.probes
    frames: list[Any] = []

    def missing() -> list[str]:
        """What the socket has not yet answered."""
        objects = [f for f in frames if isinstance(f, dict)]
        answers = [f for f in objects if flavour.answers_probe(f, probe)]
        ends = [f for f in objects if flavour.ends_reply(f) and f not in answers]
        errors = [f for f in objects if flavour.is_error(f) and f not in answers]
        return [
            *([] if answers else ["answer to the probe"]),
            *([] if errors or not refused else ["error frame"]),
            *([] if ends or not replying else ["end of its reply"]),
        ]

    ws = await flavour_socket(wire, flavour)
    since = wire.log.size()
    outcome = "answered"
    try:
        await ws.send(frame.data, text=True)
        await ws.send(flavour.probe(probe))
        deadline = time.monotonic() + PROBE_S
        while missing():
            frames.append(
                json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
            )
    except TimeoutError:
        outcome = "silent"
    except websockets.ConnectionClosed:
        outcome = "closed"
    except ValueError:
        outcome = "not JSON"
    finally:
        await ws.close()
    OUTCOMES[f"{where}: {outcome}"] += 1
    log = wire.log.since(since)
    if outcome == "closed" and isinstance(frame.data, str):
        found(test, where, "closed after a UTF-8 frame", what_shown, size, log)
    elif outcome == "silent":
        found(test, where, f"no {' and no '.join(missing())}", what_shown, size, log)
    elif outcome != "closed" and not all(isinstance(f, dict) for f in frames):
        found(test, where, "a frame that is not a JSON object", what_shown, size, log)
    elif outcome == "not JSON":
        found(test, where, "a frame that is not JSON", what_shown, size, log)
    if (signature := trouble(log)) is not None:
        found(test, where, signature, what_shown, size, log)


def substituted_text(text: str, ids: dict[str, str]) -> str:
    for key, value in ids.items():
        text = text.replace(f"@{key}@", value)
    return text


@pytest.mark.parametrize("flavour", [NADOO, RAGFLOW_SOCKET], ids=lambda f: f.name)
@settings(fuzz, max_examples=SOCKET_FRAME_EXAMPLES)
@given(data=st.data())
def test_socket_frames(wire: Wire, flavour: SocketFlavour, data: st.DataObject) -> None:
    text = data.draw(SOCKET_FRAMES[flavour.name], label="frame")
    wire.driver.run(send_frame(wire, flavour, text))


def test_socket_frames_found_nothing(wire: Wire) -> None:
    """The violations `test_socket_frames` recorded, the smallest input of each."""
    check_found(NADOO.name)
    check_found(RAGFLOW_SOCKET.name)


# -- after all of it ----------------------------------------------------------------------
async def whole_reply(wire: Wire, sock: PySocket, user: User, question: str) -> str:
    body = turn_body(sock.sid, question, DEMO)
    answer = await wire.post("/api/chat/completions", user, body)
    assert answer["status"] is True, answer
    message_id = body["id"]
    await sock.wait_until(partial(reply_ended, message_id))
    mine = [e for e in sock.events if e["message_id"] == message_id]
    assert mine[0]["type"] == "chat:active" and ended(mine[-1]), [e["type"] for e in mine]
    completion = completion_of(sock.events, message_id)
    assert completion["done"] is True and completion["content"]
    assert text_of(sock.events, message_id) == completion["content"]
    return str(completion["content"])


async def open_sockets(wire: Wire, user: User) -> int:
    async with wire.http.get(f"{wire.gw.url}/ws/stats", headers=user.bearer) as resp:
        assert resp.status == 200
        stats = await resp.json()
    return int(stats["details"]["users"].get(user.user_id, 0))


async def sockets_settled(wire: Wire, user: User, keeps: int, timeout_s: float = 10) -> int:
    """How many sockets `user` has open, once that is `keeps` or the time is up."""
    deadline = time.monotonic() + timeout_s
    count = await open_sockets(wire, user)
    while count != keeps and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        count = await open_sockets(wire, user)
    return count


async def still_served(wire: Wire) -> None:
    # The fuzzed user's socket (a new one only where the gateway rightly closed the
    # last) gets a whole reply, end to end.
    assert wire.alice_sock.client.connected
    assert await whole_reply(wire, wire.alice_sock, wire.alice, "after the fuzzing")
    # The bystander got every event of each of its turns, nothing else, and no stall.
    bystander = wire.bystander
    await bystander.finish()
    assert not bystander.broken, bystander.broken
    assert len(bystander.whole) >= 3, bystander.whole
    stalls = [b - a for a, b in zip(bystander.whole, bystander.whole[1:], strict=False)]
    assert max(stalls) < 10, f"the bystander waited {max(stalls):.1f} s for a reply"
    assert not bystander.foreign(), bystander.foreign()
    # The fuzzed users' sockets are counted once each, no more (the raw frames' sockets
    # are counted by `test_raw_socketio_frames_found_nothing`).
    for user, keeps in [(wire.alice, 1), (wire.dave, 1)]:
        count = await sockets_settled(wire, user, keeps)
        assert count == keeps, f"{user.name} has {count} sockets open, not {keeps}"
    async with wire.http.get(f"{wire.gw.url}/health") as resp:
        assert resp.status == 200, await resp.text()


def test_after_the_fuzzing_everyone_is_still_served(wire: Wire) -> None:
    wire.driver.run(still_served(wire))


def test_the_gateway_logged_no_traceback(wire: Wire) -> None:
    log = wire.gw.log()
    lines = log.splitlines()
    bad = [i for i, line in enumerate(lines) if "Traceback" in line or ERROR_LINE.match(line)]
    excerpt = "\n".join(lines[bad[0] : bad[0] + 30]) if bad else ""
    assert not bad, f"{len(bad)} traceback or ERROR line(s) in the log; the first:\n{excerpt}"


# -- what this fuzzing found (fixed: gateway/transports/socketio_guard.py and, for the
# -- tag page, gateway/api/openwebui/chats.py), each with its smallest input ----------
async def after_frames(wire: Wire, frames: list[str]) -> tuple[str, str, str]:
    """Frames sent on a fresh socket (frank's): whether a heartbeat after them is answered,
    whether an event of frank's still reaches the socket ('answered', 'silent' or
    'closed'), and what the gateway logged meanwhile."""
    ws = await raw_connect(wire, wire.frank)
    since = wire.log.size()

    def failed() -> bool:
        return "Traceback" in wire.log.since(since)

    heartbeat = writer = "closed"
    try:
        for frame in frames:
            await ws.send(frame)
        await ws.send('4291["heartbeat",0]')
        heartbeat = await answered(ws, lambda f: f == "4391[]", FOUND_WAIT_S, failed)
        if heartbeat != "closed":
            marker = await wire.relay(wire.frank, "frank_chat")
            writer = await answered(ws, lambda f: marker in str(f), FOUND_WAIT_S, failed)
    except websockets.ConnectionClosed:
        pass
    finally:
        if "silent" in (heartbeat, writer):
            ws.transport.abort()
        else:
            await ws.close()
    await asyncio.sleep(0.1)  # what the gateway logs after the socket is gone
    return heartbeat, writer, wire.log.since(since)


def logged(log: str) -> str:
    return "\n".join(excerpt(log))


@pytest.mark.parametrize(
    "frame", ["x", "", "b17", "\x00"], ids=["letter", "empty", "bad-base64", "nul"]
)
def test_found_a_text_frame_that_is_no_engineio_packet_kills_the_socket(
    wire: Wire, frame: str
) -> None:
    """gateway/transports/socketio_front.py (FrontDoor.handle → sio.handle_request):
    Engine.IO's websocket loop (`engineio/async_socket.py`, `_websocket_handler`) decodes
    each frame with `packet.Packet(encoded_packet=...)`; a text frame that does not start
    with a packet type digit, an empty one, or "b" and bad base64 raises ValueError (or
    binascii.Error) out of the handler: the error middleware logs "unhandled error" with
    a traceback and answers 500 on the upgraded connection.  The client gets no close
    frame and no answer to anything more (the 500's bytes reach it much later, as a
    corrupt frame), and the Engine.IO session lives on, counted, until its ping timeout."""
    heartbeat, _, log = wire.driver.run(after_frames(wire, [frame]))
    assert heartbeat in ("answered", "closed") and "Traceback" not in log, (
        f"DEFECT: after the text frame {frame!r} the socket is {heartbeat}, neither "
        f"answering nor closed; the log:\n{logged(log)}"
    )


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param(["4x"], id="packet-type-x"),
        pytest.param(["49"], id="packet-type-9"),
        pytest.param(["44"], id="connect-error-from-the-client"),
        pytest.param(["7"], id="engineio-type-7"),
        pytest.param(["42{}"], id="event-not-a-list"),
        pytest.param(["42["], id="json-cut-short"),
        pytest.param(['42["heartbeat",' + "9" * 101 + "]"], id="integer-of-101-digits"),
        pytest.param(['42["heartbeat",' + "[" * 1000 + "]" * 1000 + "]"], id="nested-1000-deep"),
        pytest.param(['42["connect",1]'], id="event-named-connect"),
        pytest.param(["1", "40"], id="connect-after-close"),
    ],
)
def test_found_a_malformed_socketio_packet_logs_a_traceback(wire: Wire, frames: list[str]) -> None:
    """python-socketio's packet decoding (`socketio/packet.py`, `_handle_eio_message`) and
    Engine.IO's (`Unknown receive error`) raise on a packet of an unknown type, a
    namespace or id that is not a number, JSON cut short, an integer past 100 digits
    (engineio's `_safe_int`), JSON nested past the parser's recursion limit, an event
    that is not a list; the reserved event name "connect" reaches the gateway's
    connect handler with the wrong arguments (TypeError); a CONNECT after the client
    closed its session raises KeyError.  Each is logged, twice, with its traceback
    ("message async handler error", "Task exception was never retrieved"), and the
    event gets no answer: the gateway sets no `json` of its own on the server and
    handles none of it."""
    heartbeat, _, log = wire.driver.run(after_frames(wire, frames))
    assert "Traceback" not in log, (
        f"DEFECT: {shown(frames)[:80]} logged a traceback (the socket: {heartbeat}):\n{logged(log)}"
    )


def test_found_a_binary_packet_without_attachments_deafens_the_socket(wire: Wire) -> None:
    """`45` (BINARY_EVENT, no attachment count, so 0): python-socketio keeps the packet
    as awaiting attachments (`_binary_packet`) and `add_attachment` raises "Unexpected
    binary attachment" for every packet after it, each logged with a traceback: the
    socket stays open and gets its user's events, but nothing it sends is ever answered."""
    heartbeat, writer, log = wire.driver.run(after_frames(wire, ["45"]))
    assert heartbeat in ("answered", "closed"), (
        f"DEFECT: after '45' the socket's heartbeat is {heartbeat} (its writer: {writer}); "
        f"the log:\n{logged(log)}"
    )


def test_found_an_event_named_disconnect_silences_the_socket(wire: Wire) -> None:
    """`42["disconnect"]`: python-socketio dispatches an event named "disconnect" to the
    handler registered for that name, `SocketIOTransport._on_disconnect`, which drops the
    socket (its outbox, its seat) while the connection stays open: heartbeats are still
    acked, its user's events never reach it again, and `/ws/stats` no longer counts it."""
    heartbeat, writer, log = wire.driver.run(after_frames(wire, ['42["disconnect"]']))
    assert writer in ("answered", "closed"), (
        f"DEFECT: after the event 'disconnect' the socket answers ({heartbeat}) but its "
        f"user's events are {writer}; the log:\n{logged(log)}"
    )


async def call_on_a_fresh_socket(
    wire: Wire, name: str, args: tuple[Any, ...]
) -> tuple[tuple[Any, ...] | None, str]:
    """`name` emitted with `args` by python-socketio's client, an ack asked for: the ack
    (None when none came) and the log meanwhile."""
    sock = await PySocket().connect(wire.gw.url, wire.frank.token)
    since = wire.log.size()
    acks: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
    try:
        await sock.client.emit(name, args, callback=lambda *ack: acks.set_result(ack))
        await until(lambda: acks.done() or "Traceback" in wire.log.since(since), ACK_S)
        await until(acks.done, FAILED_GRACE_S)
    finally:
        await sock.close()
    return (acks.result() if acks.done() else None), wire.log.since(since)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("events:chat", ()),
        ("user-join", ()),
        ("usage", ({}, {})),
        ("events:chat", ({"chat_id": "c1", "data": {"type": "join"}}, 1)),
        ("heartbeat", (10**100,)),
    ],
    ids=lambda value: value if isinstance(value, str) else f"{len(value)} args",
)
def test_found_an_event_with_other_arguments_gets_no_ack(
    wire: Wire, name: str, args: tuple[Any, ...]
) -> None:
    """What a client library sends for `socket.emit("events:chat")` (no argument), or
    with two arguments, or with an integer past 100 digits: the handlers
    (`SocketIOTransport._on_chat_event(sid, data)`, `_on_user_join(sid, data)`,
    `_ignore(sid, data=None)`) take exactly one argument, so python-socketio's call
    raises TypeError ("Task exception was never retrieved", logged with its traceback),
    or its JSON decoding refuses the number; either way no ack is sent and the client's
    call waits out its timeout."""
    ack, log = wire.driver.run(call_on_a_fresh_socket(wire, name, args))
    assert ack is not None and "Traceback" not in log, (
        f"DEFECT: {name!r} with {len(args)} argument(s) {shown(args)[:60]}: ack {ack}; the "
        f"log:\n{logged(log)}"
    )


@pytest.mark.parametrize(
    "body",
    [
        {"name": "t", "skip": 2**63},
        {"name": "t", "skip": -1},
        {"name": "t", "limit": -1},
        {"name": "t", "limit": 2**63},
    ],
    ids=lambda body: "-".join(f"{k}={v}" for k, v in body.items() if k != "name"),
)
def test_found_a_tag_page_outside_int64_is_a_500(wire: Wire, body: dict[str, Any]) -> None:
    """gateway/api/openwebui/chats.py, by_tag: `skip` and `limit` are taken from the body
    when they are ints, of any value, and go to PostgreSQL's OFFSET/LIMIT (`_page` in
    gateway/store/sql/chats.py): past int64 asyncpg raises DataError, a negative one
    PostgreSQL refuses; either is an unhandled error, a 500."""

    async def ask() -> tuple[int, str, str]:
        since = wire.log.size()
        async with wire.http.post(
            f"{wire.gw.url}/api/v1/chats/tags", json=body, headers=wire.frank.bearer
        ) as resp:
            return resp.status, await resp.text(), wire.log.since(since)

    status, answer, log = wire.driver.run(ask())
    assert status < 500, f"DEFECT: {body} answered {status} {answer}; the log:\n{logged(log)}"
