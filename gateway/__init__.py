"""The chat gateway: one chat core behind Open WebUI, RAGFlow, Nadoo and OpenAI clients."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("chat-gateway")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
