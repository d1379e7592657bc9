"""The live reply trace: Nadoo's plugin-debug socket (`/api/v1/ws/plugin/debug/{id}`)
and `gateway trace`, on real replies from the fake model server."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from contextlib import asynccontextmanager
from typing import Any

import websockets

from tests.api.test_nadoo_ws import recv, user, ws_url
from tests.clients import post_json
from tests.fakes.upstream import FakeUpstream
from tests.gatewayproc import GatewayProcess, make_token

TIMEOUT_S = 15
ENDS = ("execution_complete", "execution_error")


def debug_url(gateway: GatewayProcess, message_id: str, token: str) -> str:
    return ws_url(gateway, f"/api/v1/ws/plugin/debug/{message_id}", token)


@asynccontextmanager
async def started(gateway: GatewayProcess, token: str, model: str) -> Any:
    """A Nadoo chat socket whose reply (asked of `model`) has started: (socket, message id)."""
    session = f"trace-{uuid.uuid4().hex[:8]}"
    async with websockets.connect(ws_url(gateway, f"/ws/chat/{session}", token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": "go", "application_id": model}))
        start = await recv(ws)
        assert start["type"] == "response_start", start
        yield ws, start["message_id"]


async def records_until_end(trace: Any) -> list[dict[str, Any]]:
    """Every record the socket sends (a `debug_data` frame's unpacked), up to the end."""
    records: list[dict[str, Any]] = []
    while not records or records[-1]["type"] not in ENDS:
        frame = json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S))
        records += frame["data"]["records"] if frame["type"] == "debug_data" else [frame]
    return records


def of(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [record["data"] for record in records if record["type"] == kind]


async def test_a_running_reply_is_traced_step_by_step_to_its_end(
    gateway: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    _, token = user()
    async with started(gateway, token, "fake-slow") as (_, message_id):
        async with websockets.connect(debug_url(gateway, message_id, token)) as trace:
            records = await records_until_end(trace)
            await trace.send("ping")
            assert await asyncio.wait_for(trace.recv(), TIMEOUT_S) == "pong"
            await trace.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S)) == {"type": "pong"}
    assert records[0]["type"] == "execution_info"
    info = records[0]["data"]
    assert (info["execution_id"], info["status"], info["stored"]) == (message_id, "running", True)
    steps = [step["step"] for step in of(records, "step")]
    assert steps[0] == "upstream_request" and steps[-1] == "finish", steps
    assert "first_token" in steps and steps.index("first_token") < steps.index("finish")
    # The model server's call: where (no key, no query) and how it went.
    (call,) = of(records, "api_call")
    assert call["url"] == f"{fake_upstream.url}/chat/completions"
    assert (call["method"], call["status"]) == ("POST", 200) and call["ms"] >= 0
    (result,) = [data["result"] for data in of(records, "execution_complete")]
    assert result["status"] == "finished" and result["chars"] > 0
    assert result["usage"]["completion_tokens"] > 0
    # Time runs forward through the records.
    times = [record["data"]["t_ms"] for record in records]
    assert times == sorted(times)
    # Its text is not in the trace: lengths only.
    assert "Fake reply" not in json.dumps(records)


async def test_a_finished_reply_is_sent_whole_and_a_failed_one_ends_in_execution_error(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    async with started(gateway, token, "fake-dies") as (ws, message_id):
        while (await recv(ws))["type"] not in ("response_end", "error"):
            pass
    async with websockets.connect(debug_url(gateway, message_id, token)) as trace:
        first = json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S))
        assert first["type"] == "execution_info"
        history = json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S))
        assert history["type"] == "debug_data"
        records = history["data"]["records"]
    assert records[-1]["type"] == "execution_error"
    error = records[-1]["data"]
    assert error["code"] and error["error"]
    assert of(records, "api_call")[0]["status"] == 200  # it answered, then broke off


async def test_another_users_or_an_unknown_reply_is_refused_1008(
    gateway: GatewayProcess,
) -> None:
    _, owner = user()
    _, stranger = user()
    async with started(gateway, owner, "fake-slow") as (_, message_id):
        for token, execution_id in (
            (stranger, message_id),
            (owner, f"no-such-{uuid.uuid4().hex}"),
        ):
            async with websockets.connect(debug_url(gateway, execution_id, token)) as trace:
                frame = json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S))
                assert frame["type"] == "error" and "No trace" in frame["data"]["error"]
                await asyncio.wait_for(trace.wait_closed(), TIMEOUT_S)
                assert trace.close_code == 1008
        # Without a token: refused the same way.
        async with websockets.connect(debug_url(gateway, message_id, "")) as trace:
            await asyncio.wait_for(trace.wait_closed(), TIMEOUT_S)
            assert trace.close_code == 1008


async def test_another_users_reply_under_the_same_message_id_leaves_the_trace_alone(
    gateway: GatewayProcess,
) -> None:
    """Message ids are the clients': a stranger who answers into a message of their own
    under the owner's id has a trace of their own, and the owner's stays the owner's."""
    _, owner = user()
    _, stranger = user()
    async with started(gateway, owner, "fake-slow") as (_, message_id):
        step1 = {
            "chat": {
                "title": "mine",
                "history": {
                    "currentId": message_id,
                    "messages": {
                        "u1": {
                            "id": "u1",
                            "role": "user",
                            "content": "hm",
                            "childrenIds": [message_id],
                        },
                        message_id: {
                            "id": message_id,
                            "parentId": "u1",
                            "role": "assistant",
                            "content": "",
                        },
                    },
                },
            }
        }
        chat = await post_json(f"{gateway.url}/api/v1/chats/new", stranger, step1)
        body = {"chat_id": chat["id"], "id": message_id, "model": "fake-model", "stream": False}
        await post_json(f"{gateway.url}/api/chat/completions", stranger, body)
        for token, chat_of in ((owner, None), (stranger, chat["id"])):
            async with websockets.connect(debug_url(gateway, message_id, token)) as trace:
                frame = json.loads(await asyncio.wait_for(trace.recv(), TIMEOUT_S))
                # A running reply's trace opens with its info; an ended one's, whole.
                records = frame["data"]["records"] if frame["type"] == "debug_data" else [frame]
                [info] = of(records, "execution_info")
                assert info["execution_id"] == message_id
                if chat_of is not None:
                    assert info["chat_id"] == chat_of  # the stranger's own
                else:
                    assert info["chat_id"] != chat["id"]  # the owner's, not the stranger's


async def test_gateway_trace_prints_each_record_and_exits_with_the_replys_outcome(
    gateway: GatewayProcess,
) -> None:
    user_id, _ = user()
    token = make_token(user_id)
    async with started(gateway, token, "fake-slow") as (_, message_id):
        command = [sys.executable, "-m", "gateway", "trace", message_id]
        command += ["--url", gateway.url, "--token", token, "--timeout", str(TIMEOUT_S)]
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    kinds = [re.match(r"\+\s*[\d.]+ ms\s+(\S+)", line)[1] for line in lines]  # type: ignore[index]
    assert kinds[0] == "execution_info" and kinds[-1] == "execution_complete", lines
    assert {"step", "api_call"} <= set(kinds)
    assert any('step="first_token"' in line for line in lines)
    assert token not in done.stdout + done.stderr
