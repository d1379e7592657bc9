"""Defects a probe found (issue 18): input that used to give a 500, a close 1011,
or a socket that stayed open but received nothing more."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import websockets

from tests.api.test_nadoo_ws import recv, user, ws_url
from tests.gatewayproc import GatewayProcess

DEPTH = 100_000  # far past Python's recursion limit


def nested(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


async def test_a_lone_surrogate_in_a_broadcast_silences_no_member(
    gateway: GatewayProcess,
) -> None:
    """One member's broadcast holding a lone surrogate (a JSON escape) used to kill
    every other member's writer: their sockets answered pings and got nothing more."""
    _, alice = user()
    bob_id, bob = user()
    room = f"/ws/workspaces/ws-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(ws_url(gateway, room, alice)) as a:
        async with websockets.connect(ws_url(gateway, room, bob)) as b:
            assert (await recv(a))["type"] == "user_joined"
            evil = '{"type":"document_updated","data":{"doc":"evil\\ud800"}}'
            await b.send(evil)
            relayed = await recv(a)
            # Relayed without what no UTF-8 can carry.
            assert relayed["type"] == "document_updated" and relayed["data"] == {"doc": "evil"}
            # And the socket still receives what follows.
            await b.send(json.dumps({"type": "member_added", "member": "carol"}))
            after = await recv(a)
            assert (after["type"], after["member"], after["user_id"]) == (
                "member_added",
                "carol",
                bob_id,
            )


async def test_json_nested_past_the_parser_is_a_400_on_every_rest_route(
    gateway: GatewayProcess,
) -> None:
    """Sign-in and sign-up (no token needed), completions in each flavour: a 400 in
    the route's own shape, never a 500 (the recursion error used to reach the log
    as a 139 KB traceback)."""
    _, token = user()
    body = nested()
    routes = [
        ("/api/v1/auths/signin", None, "detail"),
        ("/api/v1/auths/signup", None, "detail"),
        ("/api/chat/completions", token, "detail"),
        ("/v1/chat/completions", token, "error"),
    ]
    async with aiohttp.ClientSession() as http:
        for path, bearer, shape in routes:
            headers = {"Content-Type": "application/json"}
            if bearer:
                headers["Authorization"] = f"Bearer {bearer}"
            async with http.post(f"{gateway.url}{path}", data=body, headers=headers) as resp:
                answer: Any = await resp.json()
                assert resp.status == 400, (path, resp.status, answer)
                assert shape in answer, (path, answer)
                assert "nested too deeply" in json.dumps(answer), (path, answer)
    log = gateway.log()
    assert "RecursionError" not in log and "Traceback" not in log


async def test_json_nested_past_the_parser_is_an_error_frame_on_raw_websockets(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    session = f"/ws/chat/deep-{uuid.uuid4().hex[:6]}"
    async with websockets.connect(ws_url(gateway, session, token)) as ws:
        assert (await recv(ws))["type"] == "connected"
        await ws.send(nested())
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_json")
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"  # still open, still answering


async def test_ids_of_the_wrong_type_in_a_history_are_a_400(gateway: GatewayProcess) -> None:
    """A list or an object where a message id belongs used to be a 500."""
    _, token = user()
    message = {"id": "m1", "role": "user", "content": "hi"}
    bad_histories = [
        {"messages": {"m1": {**message, "parentId": ["x"]}}, "currentId": "m1"},
        {"messages": {"m1": {**message, "parentId": {"a": 1}}}, "currentId": "m1"},
        {"messages": {"m1": {**message, "parentId": None}}, "currentId": {"a": 1}},
        {"messages": {"m1": {**message, "parentId": None}}, "currentId": ["m1"]},
    ]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for history in bad_histories:
            body = {"chat": {"title": "t", "history": history}}
            async with http.post(f"{gateway.url}/api/v1/chats/new", json=body) as resp:
                answer = await resp.json()
                assert resp.status == 400, (history, resp.status, answer)
                assert "must be a message id" in answer["detail"], answer


async def test_a_page_past_any_database_integer_is_a_ragflow_error(
    gateway: GatewayProcess,
) -> None:
    _, token = user()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{gateway.url}/ragflow/v1/system/new_token") as resp:
            key = (await resp.json())["data"]["token"]
        url = f"{gateway.url}/ragflow/api/v1/chats?page=99999999999999999999"
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            answer = await resp.json()
    assert resp.status < 500, answer
    assert answer["code"] != 0 and "page" in answer["message"], answer
