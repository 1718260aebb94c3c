"""OpenAI-compatible HTTP engine (vLLM, SGLang, llama.cpp server, llama-cpp-python server, Ollama).

Uses the *completions* endpoint, not chat: probing continues a raw prefix, so the chat template is
applied here (see :mod:`certaindex.engines.chat_template`). ``n`` samples are sent as ``n`` concurrent
requests on the same prompt, which gives exact per-sample token counts, lets a caller cancel one
sample without the others, and still shares the prefix on engines with prefix caching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any, AsyncIterator, Sequence

import httpx

from certaindex.engines.deadline import capped, remaining_s
from certaindex.engines.pool import ShardedClient
from certaindex.engines.sse import SSEError, SSEReader, parse_logprobs, token_ids
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

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Longest wait for the end of a streamed body after its ``[DONE]`` (servers send both at once).
END_OF_STREAM_S = 0.25


def normalise_base_url(url: str) -> str:
    """Accept ``http://host:port``, ``.../v1`` or ``.../v1/`` and return the server root."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EngineConfigError(f"engine URL must start with http:// or https://, got {url!r}")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


#: ``owned_by`` of servers that run one request at a time: llama-cpp-python's server, where a new
#: request even interrupts the stream in progress. Probes there go between reasoning chunks.
ONE_AT_A_TIME_OWNERS = frozenset({"me"})


class HTTPEngine(Engine):
    """An engine behind an OpenAI-compatible server."""

    streams_tokens = True
    returns_logprobs = True  # the completions endpoint's ``logprobs`` field (vLLM, SGLang, llama.cpp's server)

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        chat_template: str | ChatTemplate | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        headers_timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_connections: int = 1024,
        extra_body: dict[str, Any] | None = None,
        token_ids: bool = False,
        concurrent_streams: bool | None = None,
    ) -> None:
        """``token_ids``: the server reports streamed token ids (``return_token_ids``) and takes
        token-id prompts, as vLLM does; probes then continue the model's exact tokens.
        ``concurrent_streams``: the server runs requests side by side (vLLM, SGLang, llama.cpp's
        server), so probes can run beside an open reasoning stream; None: yes, unless
        ``GET /v1/models`` names a server that runs one request at a time (llama-cpp-python's).
        ``timeout_s``: one read of a generation may take this long. ``headers_timeout_s``: a streamed
        generation's response headers, and a setup request's answer, must come within this (a
        server that accepted the connection and hangs is given up on then, not after ``timeout_s``).
        Every attempt is also cut at the request's deadline (:mod:`certaindex.engines.deadline`)."""
        self.base_url = normalise_base_url(base_url)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.headers_timeout_s = headers_timeout_s
        self.token_ids = token_ids
        self._concurrent = concurrent_streams
        self._one_at_a_time = False
        self.model = model
        self.max_retries = max_retries
        # Engine-specific sampling fields sent with every request, e.g. {"repeat_penalty": 1.0} for
        # llama-cpp-python's server, whose default (1.1) differs from vLLM's and llama.cpp's (1.0).
        self.extra_body = dict(extra_body or {})
        self.backoff_s = backoff_s
        self._template_spec = chat_template
        # A named template is resolved now, so a wrong name is refused before any request is sent.
        self._template: ChatTemplate | None = (
            chat_template
            if isinstance(chat_template, ChatTemplate)
            else ChatTemplate.named(chat_template)
            if isinstance(chat_template, str) and chat_template != "auto"
            else None
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._pool = ShardedClient(
            max_connections,
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
        )
        # The setup read in flight (model, template), shared by the requests that come meanwhile;
        # dropped once it fails, so the next request reads again.
        self._setup_task: asyncio.Task[None] | None = None
        self._ready = False
        self._owns_client = True
        self._parent: HTTPEngine | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        """A connection pool for one request (see :mod:`certaindex.engines.pool`)."""
        return self._pool.pick()

    @_client.setter
    def _client(self, client: httpx.AsyncClient) -> None:
        self._pool.replace(client)

    def derive(self, extra_body: dict[str, Any]) -> "HTTPEngine":
        """A view of this engine that sends ``extra_body`` too (per-request sampling fields such as
        ``top_k``), sharing the connection pool, model and template. Closing the view closes nothing."""
        view = object.__new__(HTTPEngine)
        view.__dict__.update(self.__dict__)
        view.extra_body = {**self.extra_body, **extra_body}
        view._owns_client = False
        view._parent = self
        return view

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"http:{self.base_url}" + (f" ({self.model})" if self.model else "")

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        return self._concurrent if self._concurrent is not None else not self._one_at_a_time

    # -- setup -------------------------------------------------------------------------------

    async def connect(self) -> "HTTPEngine":
        """Resolve the model name and chat template once; fail early with a clear message."""
        if self._parent is not None:
            await self._parent.connect()
            self.model, self._template, self._ready = self._parent.model, self._parent._template, True
            self._one_at_a_time = self._parent._one_at_a_time
            return self
        while not self._ready:
            task = self._setup_task
            if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
                # No read in flight (or the last one failed): this request reads, within its deadline.
                task = self._setup_task = asyncio.ensure_future(self._setup())
                task.add_done_callback(_setup_done)
            await self._await_setup(task)
        return self

    async def _await_setup(self, task: "asyncio.Task[None]") -> None:
        """Wait for the shared setup read, at most until this request's own deadline; leaving
        early (a deadline, a cancelled request) leaves the read running for the others."""
        left = remaining_s()
        try:
            await asyncio.wait_for(asyncio.shield(task), None if left is None else max(0.001, left))
        except TimeoutError:
            raise EngineError(f"the engine at {self.base_url} timed out on /v1/models: the setup read (shared with "
                              "the requests before this one) gave no answer before this request's deadline") from None

    async def _setup(self) -> None:
        """One setup read: the model name (and whether the server runs requests side by side), then
        the chat template."""
        if self.model is None or self._concurrent is None:
            try:
                models = await self._request_json("GET", "/v1/models")
            except EngineError:
                if self.model is None:
                    raise
                models = {}  # the model is named: only the concurrency guess is lost
            data = models.get("data") or []
            if not data and self.model is None:
                raise EngineError(f"{self.base_url} serves no models (GET /v1/models is empty)")
            if data:
                self.model = self.model or str(data[0]["id"])
                self._one_at_a_time = data[0].get("owned_by") in ONE_AT_A_TIME_OWNERS
        if self._template is None:
            self._template = await self._resolve_template()
        self._ready = True

    async def _resolve_template(self) -> ChatTemplate:
        spec = self._template_spec
        if isinstance(spec, str) and spec != "auto":
            return ChatTemplate.named(spec)
        # llama.cpp's server publishes the model's own template; others do not.
        try:
            props = await self._request_json("GET", "/props", retries=0)
            source = props.get("chat_template")
            if isinstance(source, str) and source.strip():
                return ChatTemplate(
                    source=source,
                    bos_token=str(props.get("bos_token") or ""),
                    eos_token=str(props.get("eos_token") or ""),
                    name="server",
                )
        except EngineError:
            pass
        return ChatTemplate.named(guess_template_name(self.model or ""))

    async def prepare(self) -> None:
        await self.connect()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        template = self._template or ChatTemplate.named(
            self._template_spec
            if isinstance(self._template_spec, str) and self._template_spec != "auto"
            else guess_template_name(self.model or "")
        )
        try:
            return template.render(messages)
        except ChatTemplateError as exc:
            raise EngineError(str(exc)) from exc

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        await self.connect()
        seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
        results = await asyncio.gather(*(self._one(request, seed) for seed in seeds))
        return Completion(
            choices=tuple(choice for choice, _ in results),
            prompt_tokens=results[0][1],
        )

    def _body(self, request: GenerationRequest, seed: int | None, stream: bool) -> dict[str, Any]:
        use_ids = self.token_ids and request.prompt_ids is not None
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(request.prompt_ids) if use_ids and request.prompt_ids is not None else request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": 1,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
            if self.token_ids:
                body["return_token_ids"] = True
        if request.stop:
            body["stop"] = list(request.stop)
        if seed is not None:
            body["seed"] = seed
        if request.logprobs is not None:
            body["logprobs"] = request.logprobs
        if request.priority is not None:
            body["priority"] = request.priority
        body.update(self.extra_body)
        return body

    async def _one(self, request: GenerationRequest, seed: int | None) -> tuple[Choice, int]:
        payload = await self._request_json("POST", "/v1/completions", json=self._body(request, seed, stream=False))
        return parse_completion_choice(payload, self.base_url)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Server-sent events from the completions endpoint. Leaving the loop closes the connection,
        which makes vLLM, SGLang and llama.cpp abort the generation upstream.

        What the socket delivered is read at once (:mod:`certaindex.engines.sse`): a reader that
        fell behind catches up in few large pieces, not one Python round per event. Token counts
        come from ``token_ids``, else per-token logprobs, else one per event, corrected by the final
        usage report where the server sends one (``stream_options.include_usage``)."""
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        await self.connect()
        body = self._body(request, request.seed, stream=True)
        try:
            async with self._open_stream(body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise EngineError(
                        f"{self.base_url}/v1/completions answered HTTP {response.status_code}: {_error_text(response)}",
                        status=response.status_code, body=_body_text(response),
                    )
                reader = SSEReader()
                chunks = response.aiter_bytes()
                try:
                    async for chunk in chunks:  # whatever the socket holds: parsed and handed up at once
                        for delta in reader.feed(chunk):
                            yield delta
                        if reader.done:
                            break
                    for delta in reader.close():
                        yield delta
                except SSEError as exc:
                    raise EngineError(f"{self.base_url}: {exc}") from None
                await _read_to_end(chunks)
                if reader.finish is None:
                    raise EngineError(f"the stream from {self.base_url} ended before the completion finished")
                yield StreamDelta(text="", tokens=0, finish_reason=reader.finish, prompt_tokens=reader.prompt_tokens)
        except httpx.TimeoutException as exc:
            raise EngineError(f"the engine at {self.base_url} timed out while streaming: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise EngineError(f"streaming from {self.base_url} failed: {exc or type(exc).__name__}") from exc

    def _attempt_timeout(self, read_s: float) -> httpx.Timeout:
        """One attempt's timeouts, cut at the current request's deadline."""
        read = capped(read_s)
        return httpx.Timeout(read, connect=min(self.connect_timeout_s, read))

    @contextlib.asynccontextmanager
    async def _open_stream(self, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """A streamed completion whose response headers must come within ``headers_timeout_s``."""
        wait = capped(self.headers_timeout_s)
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(wait):
                    response = await stack.enter_async_context(self._client.stream(
                        "POST", "/v1/completions", json=body, timeout=self._attempt_timeout(self.timeout_s)))
            except TimeoutError:
                raise EngineError(f"the engine at {self.base_url} sent no response headers in {wait:.3g} s "
                                  "(timed out)") from None
            yield response

    async def _request_json(
        self, method: str, path: str, json: dict[str, Any] | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        """One JSON request, retried on connection failures and transient statuses while the request's
        deadline leaves time. A timed-out read is not retried: a hung server would hang again."""
        retries = self.max_retries if retries is None else retries
        read_s = self.timeout_s if path == "/v1/completions" else self.headers_timeout_s
        for attempt in range(retries + 1):
            try:
                response = await self._client.request(method, path, json=json, timeout=self._attempt_timeout(read_s))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = EngineError(f"cannot reach the engine at {self.base_url}: {exc or type(exc).__name__}")
            except httpx.TimeoutException as exc:
                raise EngineError(f"the engine at {self.base_url} timed out on {path}: {type(exc).__name__}") from exc
            except httpx.HTTPError as exc:
                error = EngineError(f"HTTP error talking to {self.base_url}{path}: {exc or type(exc).__name__}")
            else:
                if response.status_code < 400:
                    try:
                        data = response.json()
                    except ValueError:
                        raise EngineError(
                            f"{self.base_url}{path} answered with invalid JSON: {response.text[:200]!r}"
                        ) from None
                    if not isinstance(data, dict):
                        raise EngineError(f"{self.base_url}{path} answered with a non-object: {data!r:.200}")
                    return data
                error = EngineError(
                    f"{self.base_url}{path} answered HTTP {response.status_code}: {_error_text(response)}",
                    status=response.status_code, body=_body_text(response),
                )
                if response.status_code not in TRANSIENT_STATUS:
                    raise error
            if attempt < retries:
                delay = self.backoff_s * (2**attempt) * (1 + 0.1 * random.random())
                left = remaining_s()
                if left is not None and left <= delay:
                    break  # no time for another attempt before the request's deadline
                await asyncio.sleep(delay)
        raise error

    async def tokenize(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` without special tokens, by vLLM's (and SGLang's) ``/tokenize``."""
        await self.connect()
        data = await self._request_json(
            "POST", "/tokenize", json={"model": self.model, "prompt": text, "add_special_tokens": False}, retries=0)
        ids = _ids(data.get("tokens"))
        if ids is None:
            raise EngineError(f"{self.base_url}/tokenize answered no token ids: {str(data)[:200]}")
        return ids

    async def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's tokenizer, for servers whose streams do not report
        usage (llama-cpp-python's). Tries llama.cpp's and vLLM's ``/tokenize``, then
        llama-cpp-python's ``/extras/tokenize``; None when the server has neither."""
        await self.connect()
        attempts = (
            ("/tokenize", {"model": self.model, "prompt": text, "content": text, "add_special": False}),
            ("/extras/tokenize", {"model": self.model, "input": text}),
        )
        for path, body in attempts:
            try:
                data = await self._request_json("POST", path, json=body, retries=0)
            except EngineError:
                continue
            tokens = data.get("tokens")
            if isinstance(tokens, list):
                return len(tokens)
            if isinstance(data.get("count"), int):
                return int(data["count"])
        return None

    async def aclose(self) -> None:
        if self._owns_client:
            if self._setup_task is not None and not self._setup_task.done():
                self._setup_task.cancel()  # a setup read still in flight (a hung upstream) goes too
            await self._pool.aclose()


def _setup_done(task: "asyncio.Task[None]") -> None:
    """Mark a setup read's failure as seen: the requests that waited for it were told, and one that
    no request waits for any more (each left at its deadline) must not warn at exit."""
    if not task.cancelled():
        task.exception()


async def _read_to_end(lines: AsyncIterator[str]) -> None:
    """Read what follows ``[DONE]``: the end of the chunked body, which servers send with it. Only
    a response read to its end gives its connection back to the pool; one closed half-read closes
    the connection, and the next request pays a fresh TCP connect before its first token (about
    0.5-1 ms on a loaded 2-core VM, ``benchmarks/probe_latency.py``). A server that keeps the body
    open after ``[DONE]`` is not waited for: the connection is closed as before."""

    async def drain() -> None:
        async for _ in lines:
            pass

    try:
        await asyncio.wait_for(drain(), END_OF_STREAM_S)
    except asyncio.TimeoutError:
        pass


def _error_text(response: httpx.Response) -> str:
    try:
        data = response.json()
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                return str(err.get("message") or err)[:300]
            return str(err)[:300]
    except ValueError:
        pass
    return response.text[:300] or response.reason_phrase


def _body_text(response: httpx.Response) -> str:
    """The refusal's body as the server sent it (its first 2,000 characters), for callers that read
    more than the message (an error's ``type``, such as llama.cpp's ``exceed_context_size_error``)."""
    try:
        return response.text[:2000]
    except (UnicodeDecodeError, httpx.ResponseNotRead):
        return ""


def parse_completion_choice(payload: dict[str, Any], where: str = "engine") -> tuple[Choice, int]:
    """Turn one OpenAI completions response (n=1) into a Choice and its prompt token count."""
    try:
        raw = payload["choices"][0]
        text = raw.get("text")
        if not isinstance(text, str):
            raise TypeError("choice has no text")
        usage = payload.get("usage") or {}
        logprobs = _parse_logprobs(raw.get("logprobs"))
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None:
            completion_tokens = len(logprobs) if logprobs is not None else 0
        return (
            Choice(
                text=text,
                finish_reason=str(raw.get("finish_reason") or "stop"),
                completion_tokens=int(completion_tokens),
                logprobs=logprobs,
            ),
            int(usage.get("prompt_tokens") or 0),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EngineError(f"malformed completion from {where}: {exc}: {str(payload)[:200]}") from exc


_ids = token_ids
_parse_logprobs = parse_logprobs
