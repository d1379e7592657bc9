"""The app-wide objects, reachable from every handler under one typed key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.access import AccessGuard
from gateway.auth import Authenticator
from gateway.chat.assistants import Assistants
from gateway.chat.service import ChatService
from gateway.hub import Hub
from gateway.origins import OriginPolicy
from gateway.passwords import Passwords
from gateway.presence import Presence
from gateway.settings import Settings
from gateway.store import Store
from gateway.throttle import SignInThrottle
from gateway.transports.socketio import SocketIOTransport
from gateway.upstream.router import ModelRouter


@dataclass(slots=True)
class Gateway:
    settings: Settings
    origins: OriginPolicy
    authenticator: Authenticator
    router: ModelRouter
    service: ChatService
    store: Store
    hub: Hub
    sockets: SocketIOTransport
    presence: Presence
    assistants: Assistants
    access: AccessGuard
    passwords: Passwords
    signin_throttle: SignInThrottle


GATEWAY = web.AppKey("gateway", Gateway)


def gateway_of(request: web.Request) -> Gateway:
    return request.app[GATEWAY]
