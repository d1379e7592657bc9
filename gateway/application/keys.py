"""The typed keys under which routes and transports find what they may use.

Each service is made, and closed, by its own cleanup context in
`gateway/app.py`; a handler reads `request.app[CHATS]` and so on.  The store,
the hub and the bus have no key here: only the application layer holds them.
"""

from __future__ import annotations

from aiohttp import web

from gateway.application.accounts import Accounts
from gateway.application.assistants import Assistants
from gateway.application.chats import Chats
from gateway.application.health import Readiness
from gateway.application.realtime import Realtime
from gateway.application.replies import Replies
from gateway.edge.auth import Authenticator
from gateway.edge.origins import OriginPolicy
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ORIGINS = web.AppKey("origins", OriginPolicy)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
ACCOUNTS = web.AppKey("accounts", Accounts)
CHATS = web.AppKey("chats", Chats)
REPLIES = web.AppKey("replies", Replies)
ASSISTANTS = web.AppKey("assistants", Assistants)
REALTIME = web.AppKey("realtime", Realtime)
READINESS = web.AppKey("readiness", Readiness)
