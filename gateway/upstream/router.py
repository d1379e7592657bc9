"""Which upstream serves which model.

Model lists are fetched from every upstream and cached for
`upstream_models_ttl_s`; an upstream that fails to list is left out of the
answer (and logged) but its last good list is still used for routing, so a
flapping server does not make its models vanish mid-conversation.  When two
upstreams offer the same id, the first configured wins (Open WebUI's order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from gateway.errors import GatewayError, ModelNotFound, UpstreamError
from gateway.upstream import ModelInfo, Upstream

log = logging.getLogger(__name__)

FORCED_REFRESH_GAP_S = 2.0


class ModelRouter:
    def __init__(self, upstreams: Sequence[Upstream], ttl_s: float) -> None:
        self.upstreams = list(upstreams)
        self._ttl_s = ttl_s
        self._lists: dict[int, Sequence[ModelInfo]] = {}
        self._failures: dict[int, str] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def models(self) -> list[ModelInfo]:
        await self._refresh()
        return [model for model, _ in self._table().values()]

    async def resolve(self, model_id: str) -> Upstream:
        return (await self.lookup(model_id))[1]

    async def lookup(self, model_id: str, *, look_again: bool = True) -> tuple[ModelInfo, Upstream]:
        """A model and the upstream that serves it: `ModelNotFound`, or `UpstreamError`
        when a server that could serve it cannot be reached.  `look_again=False`: an
        unknown name is not looked for once more (a name that is often no model)."""
        await self._refresh()
        table = self._table()
        if (
            look_again
            and model_id not in table
            and time.monotonic() - self._fetched_at > FORCED_REFRESH_GAP_S
        ):
            # A model added upstream since the last fetch: look once more (but
            # not for every request naming an unknown model).
            await self._refresh(force=True)
            table = self._table()
        if model_id not in table:
            if self._failures:
                # The model may live on a server we cannot reach: say that,
                # rather than "no such model".
                down = "; ".join(self._failures.values())
                raise UpstreamError(f"Model '{model_id}' is not available: {down}")
            raise ModelNotFound(model_id, sorted(table))
        return table[model_id]

    def _table(self) -> dict[str, tuple[ModelInfo, Upstream]]:
        table: dict[str, tuple[ModelInfo, Upstream]] = {}
        for index, upstream in enumerate(self.upstreams):
            for model in self._lists.get(index, ()):
                table.setdefault(model.id, (model, upstream))
        return table

    async def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._fetched_at < self._ttl_s:
            return
        async with self._lock:
            if not force and time.monotonic() - self._fetched_at < self._ttl_s:
                return
            results = await asyncio.gather(
                *(upstream.list_models() for upstream in self.upstreams), return_exceptions=True
            )
            for index, result in enumerate(results):
                if isinstance(result, BaseException):
                    if not isinstance(result, GatewayError):
                        raise result
                    self._failures[index] = str(result)
                    log.warning(
                        "cannot list models",
                        extra={"upstream": self.upstreams[index].name, "error": str(result)},
                    )
                else:
                    self._failures.pop(index, None)
                    self._lists[index] = result
            self._fetched_at = time.monotonic()
