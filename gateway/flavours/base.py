"""The codec contract every flavour keeps (docs/ARCHITECTURE.md, "One picture").

    client frame ──Flavour.decode──▶ Command      or a GatewayError: a socket flavour's
                                                  ProtocolError carries, in `.frame`, the
                                                  exact frame the client gets back; an HTTP
                                                  flavour's error is rendered by its route
    Event ──Flavour.encoder().encode──▶ [frame, ...]   none, one or several per event

A `Flavour` is a small value holding what its frames depend on besides the
frame itself (a clock, the connection's id, a default answer mode, whether
`data:` takes a space); make one per route, or per connection when it holds the
connection's id.  `encoder()` is called once per connection (a socket) or per
exchange (an HTTP request), after the request was decoded, which it may be given:
an encoder keeps state across the replies it encodes (Nadoo's per-reply index,
RAGFlow's cumulative text), so encoders are never shared.

    flavour                          frame in              frame out
    nadoo.NadooFlavour               str (text frame)      str (JSON text)
    ragflow.RagflowSocketFlavour     str (text frame)      str (JSON text)
    ragflow.RagflowHttpFlavour       parsed JSON body      str (JSON text; `ragflow.sse` frames it)
    openwebui.OpenWebUIFlavour       (event name, data)    ("events", payload)
    openai.OpenAIFlavour             parsed JSON body      bytes (SSE events)
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

from gateway.commands import Command
from gateway.events import Event

FrameIn = TypeVar("FrameIn", contravariant=True)
FrameOut = TypeVar("FrameOut")


@runtime_checkable
class Encoder(Protocol[FrameOut]):
    def encode(self, event: Event) -> list[FrameOut]:
        """The frames for one event, in order; [] when the flavour shows nothing for it."""
        ...


@runtime_checkable
class Flavour(Protocol[FrameIn, FrameOut]):
    def decode(self, frame: FrameIn) -> Command:
        """One client frame as a Command; raises GatewayError (see the module's picture)."""
        ...

    def encoder(self, request: Command | None = None) -> Encoder[FrameOut]:
        """A new encoder for one connection or exchange; `request` is what the exchange
        decoded, when frames depend on it (OpenAI's model and usage chunk)."""
        ...
