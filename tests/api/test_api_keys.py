"""API keys as users and operators manage them: shown once, listed with a hint and
their times (never the key), one Open WebUI key per user, revoked by id from REST or
the CLI — refused at once, and the sockets opened with it closed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from tests.gatewayproc import SECRET, GatewayProcess

AUTHS = "/api/v1/auths"


async def call(
    gw: GatewayProcess, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, gw.url + path, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


async def sign_up(gw: GatewayProcess, name: str) -> dict[str, Any]:
    body = {"name": name, "email": f"{name}@example.com", "password": f"{name}-secret"}
    status, session = await call(gw, "POST", f"{AUTHS}/signup", None, body)
    assert status == 200, session
    return dict(session)


async def works(gw: GatewayProcess, key: str) -> bool:
    status, _ = await call(gw, "GET", "/v1/models", key)
    assert status in (200, 401), status
    return status == 200


async def test_a_key_is_shown_once_listed_by_hint_and_replaced_by_the_next(
    start_gateway: Any,
) -> None:
    gw = start_gateway()
    admin = await sign_up(gw, "ada")
    bob = await sign_up(gw, "bob")
    status, _ = await call(gw, "GET", f"{AUTHS}/api_key", bob["token"])
    assert status == 404  # none yet, as Open WebUI answers
    status, made = await call(gw, "POST", f"{AUTHS}/api_key", bob["token"], {})
    key = made["api_key"]
    assert status == 200 and key.startswith("sk-")
    before = int(time.time())
    assert await works(gw, key)
    status, shown = await call(gw, "GET", f"{AUTHS}/api_key", bob["token"])
    assert status == 200 and shown["api_key"] is None  # only its hash is kept
    assert shown["hint"] == f"{key[:6]}…{key[-4:]}" and shown["kind"] == "openwebui"
    assert shown["user_id"] == bob["id"] and len(shown["id"]) == 12
    assert abs(shown["last_used_at"] - before) <= 5 and shown["created_at"] <= before + 1
    assert key not in json.dumps(shown)
    # A new key: the one before stops working (one key per user, as in Open WebUI).
    status, again = await call(gw, "POST", f"{AUTHS}/api_key", bob["token"], {})
    assert status == 200 and again["api_key"] != key
    assert not await works(gw, key) and await works(gw, again["api_key"])
    status, mine = await call(gw, "GET", f"{AUTHS}/api_keys", bob["token"])
    assert status == 200 and [k["hint"] for k in mine] == [
        f"{again['api_key'][:6]}…{again['api_key'][-4:]}"
    ]
    # Everyone's: admins only.
    status, _ = await call(gw, "GET", f"{AUTHS}/api_keys/all", bob["token"])
    assert status == 403
    status, made = await call(gw, "POST", f"{AUTHS}/api_key", admin["token"], {})
    status, everyone = await call(gw, "GET", f"{AUTHS}/api_keys/all", admin["token"])
    assert status == 200 and {k["user_id"] for k in everyone} == {admin["id"], bob["id"]}


async def test_a_key_revoked_by_id_is_refused_and_its_sockets_closed(start_gateway: Any) -> None:
    gw = start_gateway({"GATEWAY_ACCESS_RECHECK_S": "0.2"})
    admin = await sign_up(gw, "ada")
    bob = await sign_up(gw, "bob")
    eve = await sign_up(gw, "eve")
    _, made = await call(gw, "POST", f"{AUTHS}/api_key", bob["token"], {})
    key = made["api_key"]
    _, shown = await call(gw, "GET", f"{AUTHS}/api_key", bob["token"])
    # Another user cannot revoke it (nor learn it exists); a bad id is not found.
    for token, key_id in (
        (eve["token"], shown["id"]),
        (bob["token"], "zz"),
        (bob["token"], "0" * 12),
    ):
        status, _ = await call(gw, "DELETE", f"{AUTHS}/api_keys/{key_id}", token)
        assert status == 404
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/s1?token={key}"
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        status, _ = await call(gw, "DELETE", f"{AUTHS}/api_keys/{shown['id']}", bob["token"])
        assert status == 200
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008
    assert not await works(gw, key)
    status, mine = await call(gw, "GET", f"{AUTHS}/api_keys", bob["token"])
    assert status == 200 and mine == []
    # An admin revokes anyone's.
    _, made = await call(gw, "POST", f"{AUTHS}/api_key", eve["token"], {})
    _, theirs = await call(gw, "GET", f"{AUTHS}/api_key", eve["token"])
    status, _ = await call(gw, "DELETE", f"{AUTHS}/api_keys/{theirs['id']}", admin["token"])
    assert status == 200 and not await works(gw, made["api_key"])


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data), "WEBUI_SECRET_KEY": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True
    )


async def test_the_cli_lists_and_revokes_keys_a_running_gateway_then_refuses(
    start_gateway: Any, tmp_path: Path
) -> None:
    data = tmp_path / "keys"
    added = cli(data, "users", "add", "--email", "op@example.com", "--password", "op-secret-1")
    assert added.returncode == 0, added.stderr
    key = cli(data, "apikey", "create", "--user", "op@example.com").stdout.strip()
    ragflow = cli(data, "apikey", "create", "--user", "op@example.com", "--kind", "ragflow")
    gw = start_gateway({"GATEWAY_ACCESS_RECHECK_S": "0.2"}, data_dir=data)
    assert await works(gw, key) and await works(gw, ragflow.stdout.strip())
    listed = cli(data, "apikey", "list", "--user", "op@example.com")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split("\t") == ["id", "user", "kind", "hint", "created", "last used"]
    by_kind = {row.split("\t")[2]: row.split("\t") for row in rows}
    assert set(by_kind) == {"openwebui", "ragflow"}
    assert by_kind["openwebui"][3] == f"{key[:6]}…{key[-4:]}" and by_kind["openwebui"][5] != "-"
    assert key not in listed.stdout
    url = f"ws://127.0.0.1:{gw.port}/ws/chat/s1?token={key}"
    async with websockets.connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        revoked = cli(data, "apikey", "revoke", by_kind["openwebui"][0])
        assert revoked.returncode == 0, revoked.stderr
        # Closed by the running gateway at its next recheck.
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008
    assert not await works(gw, key) and await works(gw, ragflow.stdout.strip())
    missing = cli(data, "apikey", "revoke", by_kind["openwebui"][0])
    assert missing.returncode == 1 and "no API key" in missing.stderr
    unknown = cli(data, "apikey", "list", "--user", "nobody@example.com")
    assert unknown.returncode == 1 and "no user" in unknown.stderr


async def test_a_new_sk_key_from_the_cli_revokes_the_one_before(
    start_gateway: Any, tmp_path: Path
) -> None:
    # One `sk-` key per user, from a shell as over REST (RAGFlow keys are many).
    data = tmp_path / "keys"
    added = cli(data, "users", "add", "--email", "op@example.com", "--password", "op-secret-1")
    assert added.returncode == 0, added.stderr
    first = cli(data, "apikey", "create", "--user", "op@example.com")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    ragflow = cli(data, "apikey", "create", "--user", "op@example.com", "--kind", "ragflow")
    second = cli(data, "apikey", "create", "--user", "op@example.com")
    assert second.returncode == 0, second.stderr
    assert "earlier sk- key (1) revoked" in second.stderr
    assert first.stdout.strip() not in second.stdout + second.stderr
    gw = start_gateway(data_dir=data)
    assert not await works(gw, first.stdout.strip())
    assert await works(gw, second.stdout.strip()) and await works(gw, ragflow.stdout.strip())
    listed = cli(data, "apikey", "list", "--user", "op@example.com").stdout.strip().splitlines()
    assert sorted(row.split("\t")[2] for row in listed[1:]) == ["openwebui", "ragflow"]
