"""Engines behind one small interface: embedded llama.cpp, OpenAI-compatible HTTP, and fakes for tests."""

from __future__ import annotations

from pathlib import Path

from certaindex.engines.base import (
    Choice,
    Completion,
    Engine,
    EngineConfigError,
    EngineError,
    GenerationRequest,
    TokenLogprobs,
)

__all__ = [
    "Choice",
    "Completion",
    "Engine",
    "EngineConfigError",
    "EngineError",
    "GenerationRequest",
    "TokenLogprobs",
    "make_engine",
]


def make_engine(
    spec: str = "embedded",
    model: str | None = None,
    chat_template: str | None = None,
    api_key: str | None = None,
    logprobs: bool = False,
    extra_body: dict | None = None,
) -> Engine:
    """Build an engine from a command-line style spec.

    ``embedded`` (the default model), ``embedded:/path/model.gguf`` or a ``.gguf`` path run llama.cpp
    in process; ``http://host:port`` (with or without ``/v1``) talks to an OpenAI-compatible server,
    ``model`` naming the served model (default: the server's first).
    """
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        from certaindex.engines.http import HTTPEngine

        return HTTPEngine(spec, model=model, chat_template=chat_template, api_key=api_key, extra_body=extra_body)
    if spec == "embedded" or spec.startswith("embedded:") or spec.endswith(".gguf"):
        from certaindex.engines.embedded import EmbeddedEngine

        path = spec.split(":", 1)[1] if spec.startswith("embedded:") else (None if spec == "embedded" else spec)
        path = path or model
        if path and not Path(path).expanduser().is_file():
            raise EngineConfigError(f"model file not found: {path}")
        return EmbeddedEngine(
            model_path=Path(path).expanduser() if path else None,
            chat_template=chat_template,
            logprobs=logprobs,
        )
    raise EngineConfigError(
        f"unknown engine {spec!r}: use 'embedded', 'embedded:/path/model.gguf' or an http(s):// URL"
    )
