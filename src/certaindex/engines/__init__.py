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
    timeout_s: float = 300.0,
    verbose: bool = False,
    headers_timeout_s: float = 60.0,
    token_ids: bool = False,
) -> Engine:
    """Build an engine from a command-line style spec.

    ``embedded`` (the default model), ``embedded:/path/model.gguf`` or a ``.gguf`` path run llama.cpp
    in process; ``http://host:port`` (with or without ``/v1``) talks to an OpenAI-compatible server,
    ``model`` naming the served model (default: the server's first; ``timeout_s``: how long one
    read from it may take; ``headers_timeout_s``: how long a streamed
    request's response headers may take; ``verbose``: let llama.cpp's own log through; ``token_ids``: the server
    reports and takes token ids, as vLLM does). Several comma-separated URLs
    (``http://a:8000/v1,http://b:8000/v1``) are replicas of one model behind a ReplicatedEngine.
    """
    spec = spec.strip()
    if spec.startswith(("http://", "https://")):
        from certaindex.engines.http import HTTPEngine, normalise_base_url

        urls = [url.strip() for url in spec.split(",")]
        if any(not url.startswith(("http://", "https://")) for url in urls):
            raise EngineConfigError(f"every replica in {spec!r} must be an http(s):// URL, separated by commas")
        roots = [normalise_base_url(url) for url in urls]
        if len(set(roots)) != len(roots):
            raise EngineConfigError(f"a replica is named twice in {spec!r}")
        engines = [
            HTTPEngine(url, model=model, chat_template=chat_template, api_key=api_key, extra_body=extra_body,
                       timeout_s=timeout_s, headers_timeout_s=headers_timeout_s, token_ids=token_ids)
            for url in urls
        ]
        if len(engines) == 1:
            return engines[0]
        from certaindex.engines.replicas import ReplicatedEngine

        return ReplicatedEngine(engines)
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
            verbose=verbose,
        )
    raise EngineConfigError(
        f"unknown engine {spec!r}: use 'embedded', 'embedded:/path/model.gguf' or an http(s):// URL"
    )
