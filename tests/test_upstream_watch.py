"""The proxy's view of its upstream's models: a read that fails (a timeout while the upstream is
busy) must not make it forget the model, or requests fall back to the conservative profile."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from certaindex.server.upstream_watch import UpstreamWatch


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
