"""The proxy's view of its upstream's models: a read that fails (a timeout while the upstream is
busy) must not make it forget the model, or requests fall back to the conservative profile."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx

from certaindex.server.upstream_watch import UpstreamWatch, failure_reason, start_warning


def test_a_failed_read_keeps_the_models_last_read_and_a_new_answer_replaces_them() -> None:
    answers = iter([(True, ("org/model-a",), None), (False, (), "http://u: ReadTimeout"),
                    (True, ("org/model-b",), None)])
    watch = UpstreamWatch(SimpleNamespace(root_urls=["http://u"]))  # type: ignore[arg-type]

    async def read(root: str):
        return next(answers)

    watch._read = read  # type: ignore[method-assign]
    first, busy, changed = (asyncio.run(watch._read_all()) for _ in range(3))
    assert first.models == ("org/model-a",)
    assert busy.models == ("org/model-a",) and busy.reachable is False and "ReadTimeout" in busy.error
    assert changed.models == ("org/model-b",)


def test_only_the_first_read_words_the_start_warning_and_names_every_upstream_down() -> None:
    answers = iter([[(False, (), "http://a: cannot connect"), (True, ("m",), None)],
                    [(False, (), "http://a: cannot connect"), (False, (), "http://b: HTTP 503")]])
    watch = UpstreamWatch(SimpleNamespace(root_urls=["http://a", "http://b"]))  # type: ignore[arg-type]
    reads = {}

    async def read(root: str):
        if not reads:
            reads.update(zip(["http://a", "http://b"], next(answers)))
        return reads.pop(root)

    watch._read = read  # type: ignore[method-assign]
    asyncio.run(watch._read_all())
    first = watch.first_warning
    assert first == "upstream down: http://a (cannot connect). Requests go to the 1 that answer"
    asyncio.run(watch._read_all())  # a later read that finds both down does not rewrite it
    assert watch.first_warning == first


def test_the_start_warning_when_no_upstream_answers_and_none_when_all_do() -> None:
    down = start_warning(["http://a"], [(False, (), "http://a: no answer in 2 s")])
    assert down is not None and down.startswith("no upstream answers: http://a (no answer in 2 s). Serving anyway")
    assert start_warning(["http://a"], [(True, (), "http://a: GET /v1/models answered HTTP 404")]) is None
    assert failure_reason(httpx.ConnectError("refused"), 2.0) == "cannot connect"
    assert failure_reason(httpx.ReadTimeout("slow"), 2.5) == "no answer in 2.5 s"
