"""Sign-up, sign-in, sessions and API keys (`/api/v1/auths/*`), and the users/apikey CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.gatewayproc import SECRET, GatewayProcess, make_token

SESSION_KEYS = {
    "token",
    "token_type",
    "expires_at",
    "id",
    "email",
    "name",
    "role",
    "profile_image_url",
    "permissions",
}


async def post(
    url: str, body: Any, token: str | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.json(), resp


async def test_signup_signin_session_and_api_key(start_gateway: Any) -> None:
    gw = start_gateway({"ENABLE_SIGNUP": "false"})
    base = gw.url + "/api/v1/auths"
    status, first, resp = await post(
        f"{base}/signup", {"name": "Ada", "email": "Ada@Example.com", "password": "ada-secret"}
    )
    assert status == 200 and set(first) == SESSION_KEYS
    assert (
        first["role"] == "admin"
        and first["email"] == "ada@example.com"
        and first["token_type"] == "Bearer"
    )
    assert "token" in resp.cookies and resp.cookies["token"]["httponly"]
    # Sign-up is disabled after the first user...
    status, error, _ = await post(
        f"{base}/signup", {"email": "bob@example.com", "password": "bob-secret"}
    )
    assert status == 403 and "disabled" in error["detail"]
    # ...but an admin can add users.
    status, bob, _ = await post(
        f"{base}/add",
        {"name": "Bob", "email": "bob@example.com", "password": "bob-secret", "role": "user"},
        first["token"],
    )
    assert status == 200 and bob["role"] == "user" and bob["token"]
    status, error, _ = await post(
        f"{base}/add", {"email": "eve@example.com", "password": "eve-secret"}, bob["token"]
    )
    assert status == 403
    status, error, _ = await post(
        f"{base}/add", {"email": "BOB@example.com", "password": "bob-secret"}, first["token"]
    )
    assert status == 409
    # Sign-in: right and wrong passwords (Open WebUI answers 400, not 401).
    status, session, _ = await post(
        f"{base}/signin", {"email": "bob@EXAMPLE.com", "password": "bob-secret"}
    )
    assert status == 200 and session["id"] == bob["id"]
    status, error, _ = await post(
        f"{base}/signin", {"email": "bob@example.com", "password": "nope"}
    )
    assert status == 400 and "incorrect" in error["detail"]
    status, error, _ = await post(f"{base}/signin", {"email": "bob@example.com"})
    assert status == 400
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{base}/", headers={"Authorization": f"Bearer {session['token']}"}
        ) as got:
            assert got.status == 200 and (await got.json())["email"] == "bob@example.com"
        async with http.get(f"{base}/") as got:
            assert got.status == 401
    # An API key works on the OpenAI flavour as its owner, and is stored hashed.
    status, key, _ = await post(f"{base}/api_key", {}, session["token"])
    assert status == 200 and key["api_key"].startswith("sk-") and len(key["api_key"]) == 35
    reply = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=key["api_key"], max_retries=0
    ).chat.completions.create(model="gateway-demo", messages=[{"role": "user", "content": "hello"}])
    assert "demo" in (reply.choices[0].message.content or "")
    assert key["api_key"].encode() not in (gw.data_dir / "gateway.db").read_bytes()


async def test_signin_token_works_on_chats(gateway: GatewayProcess) -> None:
    base = gateway.url + "/api/v1/auths"
    email = f"carol-{id(gateway)}@example.com"
    status, session, _ = await post(
        f"{base}/signup", {"name": "Carol", "email": email, "password": "carol-secret"}
    )
    assert status == 200
    status, chat, _ = await post(
        gateway.url + "/api/v1/chats/new", {"chat": {"title": "x"}}, session["token"]
    )
    assert status == 200 and chat["user_id"] == session["id"]


async def test_jwt_users_are_created_just_in_time(gateway: GatewayProcess) -> None:
    token = make_token("jit-user", name="Jit Name")
    async with aiohttp.ClientSession() as http:
        async with http.get(
            gateway.url + "/api/v1/auths/", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            session = await resp.json()
    assert (
        session["id"] == "jit-user" and session["name"] == "Jit Name" and session["role"] == "user"
    )


def run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(data), "WEBUI_SECRET_KEY": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True
    )


def test_cli_store_commands_without_a_store_refuse_and_make_nothing(tmp_path: Path) -> None:
    # Run with another DATA_DIR than the server's (another directory): they would
    # list, change or find nothing, unseen, on a store of their own.
    data = tmp_path / "elsewhere"
    for args in (
        ("users", "list"),
        ("users", "remove", "a@example.com"),
        ("users", "role", "a@example.com", "user"),
        ("apikey", "list"),
        ("apikey", "create", "--user", "a@example.com"),
        ("apikey", "revoke", "k1"),
        ("admin", "stats", "--url", "http://127.0.0.1:9"),
    ):
        ran = run_cli(data, *args)
        assert ran.returncode == 1, (args, ran.stderr)
        assert ran.stderr == (
            f"gateway: no database at {data / 'gateway.db'}: run this where the gateway "
            "runs (its DATA_DIR or --config), or give it the gateway's DATABASE_URL\n"
        ), args
        assert not data.exists(), args


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--email", "not-an-email", "--password", "long-enough-1"), "A valid email address"),
        (("--email", "a@example.com", "--password", "short"), "at least 8"),
        (("--email", "a@example.com", "--password", "long-enough-1", "--name", "n" * 300), "name"),
    ],
)
def test_a_user_the_cli_would_refuse_makes_no_store(
    args: tuple[str, ...], said: str, tmp_path: Path
) -> None:
    data = tmp_path / "first"
    refused = run_cli(data, "users", "add", *args)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert said in refused.stderr and "note:" not in refused.stderr
    assert not data.exists()


def test_cli_users_and_api_keys(start_gateway: Any, tmp_path: Path) -> None:
    data = tmp_path / "cli"
    added = run_cli(
        data,
        "users",
        "add",
        "--email",
        "root@example.com",
        "--password",
        "root-secret",
        "--role",
        "admin",
    )
    assert added.returncode == 0, added.stderr
    # The first command made the store: it says so (a wrong DATA_DIR shows), once;
    # and the database, which holds password hashes, is its owner's alone.
    assert "gateway: note: no database was at" in added.stderr, added.stderr
    assert (data / "gateway.db").stat().st_mode & 0o777 == 0o600
    user_id = added.stdout.split("\t")[0]
    assert (
        run_cli(
            data, "users", "add", "--email", "ROOT@example.com", "--password", "root-secret"
        ).returncode
        == 1
    )
    listed = run_cli(data, "users", "list")
    assert listed.stdout.splitlines()[0] == "id\temail\trole\tname"
    assert "root@example.com" in listed.stdout and "admin" in listed.stdout
    assert "note:" not in listed.stderr
    # A role changed (how a pending user is let in), then back.
    pending = run_cli(data, "users", "role", "root@example.com", "pending")
    assert pending.returncode == 0 and pending.stdout.strip().endswith("pending"), pending
    assert "\tpending\t" in run_cli(data, "users", "list").stdout
    assert run_cli(data, "users", "role", "root@example.com", "admin").returncode == 0
    assert run_cli(data, "users", "role", "nobody@example.com", "user").returncode == 1
    key = run_cli(data, "apikey", "create", "--user", "root@example.com").stdout.strip()
    ragflow_key = run_cli(
        data, "apikey", "create", "--user", user_id, "--kind", "ragflow"
    ).stdout.strip()
    assert key.startswith("sk-") and ragflow_key.startswith("ragflow-") and len(ragflow_key) == 51
    missing = run_cli(data, "apikey", "create", "--user", "nobody")
    assert missing.returncode == 1 and "no user" in missing.stderr
    gw = start_gateway({"DATA_DIR": str(data)}, data_dir=data)
    for token in (key, ragflow_key):
        models = openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0).models.list()
        assert [m.id for m in models] == ["gateway-demo"]


def test_the_first_user_the_cli_adds_is_an_admin_when_tokens_made_users_first(
    start_gateway: Any, tmp_path: Path
) -> None:
    """The README's order: a token's user first (`gateway token`, then a request),
    then `gateway users add`: that user is the store's first admin, so `admin`
    commands work; the next one added is a user."""
    data = tmp_path / "order"
    gw = start_gateway({"DATA_DIR": str(data)}, data_dir=data)
    token = run_cli(data, "token", "--user", "alice").stdout.strip()
    models = openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0).models.list()
    assert [m.id for m in models] == ["gateway-demo"]  # alice is in the store now
    gw.stop()
    first = run_cli(data, "users", "add", "--email", "op@example.com", "--password", "op-secret-1")
    assert first.returncode == 0 and first.stdout.strip().endswith("\tadmin"), first
    second = run_cli(data, "users", "add", "--email", "bo@example.com", "--password", "bo-secret-1")
    assert second.returncode == 0 and second.stdout.strip().endswith("\tuser"), second
    gw = start_gateway({"DATA_DIR": str(data)}, data_dir=data)
    stats = run_cli(data, "admin", "stats", "--url", gw.url)
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith("replica") and "not an admin's" not in stats.stderr, stats
    # A user's token sees the totals only: said, not shown as empty sections.
    partial = run_cli(data, "admin", "stats", "--url", gw.url, "--token", token)
    assert partial.returncode == 0, partial.stderr
    assert partial.stdout.startswith("connections") and "replica" not in partial.stdout
    assert "the token is not an admin's: the totals only" in partial.stderr
