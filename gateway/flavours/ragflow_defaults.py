"""What an assistant is when its owner said nothing (RAGFlow's defaults), and what its
config makes of a reply: the system prompt, the sampling settings, the opener.

Pure data and functions: RAGFlow's product rules, used by the assistants
(`application/assistants.py`) and shown by the RAGFlow codec (`flavours/ragflow.py`).
An assistant's config::

    {"avatar": "", "description": "…", "dataset_ids": [],
     "llm": {"model_name": "m", "temperature": 0.1, …},     LLM_DEFAULTS under what was sent
     "prompt": {"prompt": "…{knowledge}…", "opener": "…", …}} PROMPT_DEFAULTS under what was sent
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_OPENER = "Hi! I'm your assistant. What can I do for you?"
DEFAULT_DESCRIPTION = "A helpful Assistant"
DEFAULT_SESSION_NAME = "New session"
# RAGFlow's default system prompt (it expects a knowledge base in {knowledge}).
DEFAULT_PROMPT = (
    "You are an intelligent assistant. Please summarize the content of the knowledge base "
    "to answer the question. Please list the data in the knowledge base and answer in detail. "
    "When all knowledge base content is irrelevant to the question, your answer must include "
    "the sentence 'The answer you are looking for is not found in the knowledge base!' "
    "Answers need to consider chat history.\nHere is the knowledge base:\n{knowledge}\n"
    "The above is the knowledge base."
)
LLM_DEFAULTS: dict[str, Any] = {
    "temperature": 0.1,
    "top_p": 0.3,
    "presence_penalty": 0.4,
    "frequency_penalty": 0.7,
    "max_tokens": 512,
}
PROMPT_DEFAULTS: dict[str, Any] = {
    "similarity_threshold": 0.2,
    "keywords_similarity_weight": 0.7,
    "top_n": 6,
    "top_k": 1024,
    "variables": [{"key": "knowledge", "optional": True}],
    "rerank_model": "",
    "empty_response": "Sorry! No relevant content was found in the knowledge base!",
    "opener": DEFAULT_OPENER,
    "show_quote": True,
    "prompt": DEFAULT_PROMPT,
}
# Sampling settings of an assistant's `llm` the upstream understands.
LLM_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens")


def assistant_config(settings: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A new assistant's whole config: the settings sent, RAGFlow's defaults for the rest."""
    llm = {**LLM_DEFAULTS, **settings.get("llm", {})}
    llm["model_name"] = llm.get("model_name") or model
    return {
        "avatar": settings.get("avatar", ""),
        "description": settings.get("description", DEFAULT_DESCRIPTION),
        "dataset_ids": [],
        "llm": llm,
        "prompt": {**PROMPT_DEFAULTS, **settings.get("prompt", {})},
    }


def system_prompt(config: Mapping[str, Any]) -> str:
    """The assistant's prompt as the model's system message; no knowledge base is attached."""
    prompt = config.get("prompt", {}).get("prompt") or DEFAULT_PROMPT
    return str(prompt).replace("{knowledge}", "")


def model_params(config: Mapping[str, Any]) -> dict[str, Any]:
    llm = config.get("llm", {})
    return {key: llm[key] for key in LLM_PARAMS if llm.get(key) is not None}


def opener_of(config: Mapping[str, Any]) -> str:
    return str(config.get("prompt", {}).get("opener") or DEFAULT_OPENER)
