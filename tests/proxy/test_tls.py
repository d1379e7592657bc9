"""wss:// and https:// through the proxies' TLS listeners: nginx's shipped 443 server and
Caddy's site (there on the test's certificate in place of the one Caddy would get
itself), on a self-signed certificate the clients are told to trust."""

from __future__ import annotations

import json
import ssl
import uuid

import aiohttp
import httpx2  # the HTTP client the openai package is built on
import openai
import pytest
import websockets

from tests.clients import JSSocket, text_of, turn_body
from tests.proxy.runners import Proxy
from tests.proxy.test_through_proxies import expected, user


def tls(proxy: Proxy) -> tuple[str, ssl.SSLContext]:
    assert proxy.tls_port is not None and proxy.cert is not None
    return f"127.0.0.1:{proxy.tls_port}{proxy.prefix}", ssl.create_default_context(
        cafile=str(proxy.cert)
    )


@pytest.mark.parametrize("name", ["nginx-root", "caddy-root"])
async def test_a_nadoo_client_over_wss(proxies: dict[str, Proxy], name: str) -> None:
    where, context = tls(proxies[name])
    url = f"wss://{where}/ws/chat/tls-{uuid.uuid4().hex[:6]}?token={user()}"
    async with websockets.connect(url, ssl=context) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "chat", "content": "over tls"}))
        while (frame := json.loads(await ws.recv()))["type"] != "response_end":
            pass
    assert frame["full_response"] == expected("over tls")


@pytest.mark.parametrize("name", ["nginx-subpath", "caddy-subpath"])
async def test_socketio_over_wss_and_openai_over_https(
    proxies: dict[str, Proxy], name: str
) -> None:
    where, context = tls(proxies[name])
    token = user()
    origin = f"https://127.0.0.1:{proxies[name].tls_port}"
    js = await JSSocket().start(origin, token, path="/chat/ws/socket.io", insecure=True)
    try:
        body = turn_body(js.sid, "socket over tls")
        async with httpx2.AsyncClient(verify=context) as http:
            sent = await http.post(
                f"https://{where}/api/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert sent.status_code == 200, sent.text
            client = openai.AsyncOpenAI(
                base_url=f"https://{where}/v1", api_key=token, http_client=http
            )
            stream = await client.chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "tls"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await js.wait_for("done")
    finally:
        await js.close()
    assert text_of(js.events, body["id"]) == expected("socket over tls")
    assert text == expected("tls")


@pytest.mark.parametrize("name", ["nginx-root", "caddy-root"])
async def test_the_gateway_knows_the_client_used_https(
    proxies: dict[str, Proxy], name: str
) -> None:
    """X-Forwarded-Proto from the proxy: the session cookie is Secure over https only."""
    where, context = tls(proxies[name])
    plain = proxies[name].base
    cookies = {}
    for scheme, base in (("https", f"https://{where}"), ("http", plain)):
        email = f"{scheme}-{uuid.uuid4().hex[:8]}@example.com"
        body = {"email": email, "password": "correct horse", "name": scheme}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/auths/signup", json=body, ssl=context) as resp:
                assert resp.status == 200, await resp.text()
                cookies[scheme] = resp.cookies["token"]
    assert cookies["https"]["secure"] is True
    assert not cookies["http"]["secure"]
