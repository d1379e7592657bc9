"""The app-wide objects, reachable from every handler under one typed key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.application.access import AccessGuard
from gateway.chat.assistants import Assistants
from gateway.chat.service import ChatService
from gateway.edge.auth import Authenticator
from gateway.edge.origins import OriginPolicy
from gateway.edge.passwords import Passwords
from gateway.edge.throttle import SignInThrottle
from gateway.fanout.hub import Hub
from gateway.fanout.presence import Presence
from gateway.settings import Settings
from gateway.store import Store
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
