"""End to end on the embedded llama.cpp engine with the real shipped model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import dataclasses

import pytest

from certaindex.core.answers import answers_equal
from certaindex.engines.base import GenerationRequest
from certaindex.programs.cot import CoTConfig, solve_cot
from tests.conftest import UTF8_SLACK

pytestmark = pytest.mark.model

async def test_engine_generates_and_counts_tokens(embedded_engine) -> None:
    prompt = embedded_engine.render_chat([{"role": "user", "content": "Count from one to five."}])
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    completion = await embedded_engine.generate(GenerationRequest(prompt=prompt, max_tokens=8))
    # Only what holds for any text (the model's text moves with the CPU and the KV-cache state):
    assert completion.prompt_tokens == embedded_engine.count_tokens(prompt) > 5
    choice = completion.first
    assert isinstance(choice.text, str) and 0 <= choice.completion_tokens <= 8 + UTF8_SLACK
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason == "length":
        assert choice.completion_tokens >= 8


QUESTIONS = [
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in repairs.  "
    "This increased the value of the house by 150%.  How much profit did he make?",
    "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?",
]


async def test_early_exit_on_real_gsm8k_problems(embedded_engine) -> None:
    """The program's invariants on real text: whatever the model writes (it moves with the CPU and
    the cache state), the accounting adds up, probes come every interval, and the program stops
    exactly when its own probe history says so. That it does exit early on settling probes is
    checked on the scripted engine (tests/test_cot.py) and on replayed real traces."""
    config = CoTConfig(budget=256, probe_interval=16, k=2, probe_tokens=16)
    for question in QUESTIONS:
        early = await solve_cot(embedded_engine, question, config)
        full = await solve_cot(embedded_engine, question, dataclasses.replace(config, early_exit=False))
        # Accounting: every generated token is counted, probes included.
        assert early.total_tokens == early.reasoning_tokens + early.probe_tokens + early.answer_tokens
        assert early.probe_tokens == sum(p.tokens for p in early.probes)
        assert all(p.tokens <= config.probe_tokens + UTF8_SLACK for p in early.probes)
        assert max(early.reasoning_tokens, full.reasoning_tokens) <= config.budget + UTF8_SLACK
        assert full.probe_tokens == 0 or full.stop_reason == "budget"
        # Probes are forked every probe_interval reasoning tokens (a chunk may run a few byte
        # tokens over, to finish a UTF-8 character).
        gaps = [b - a for a, b in zip([0] + [p.at_tokens for p in early.probes], [p.at_tokens for p in early.probes])]
        assert all(config.probe_interval <= gap <= config.probe_interval + UTF8_SLACK for gap in gaps[:-1])
        # The program stops exactly when its own probe history says the answer has settled.
        settled = [
            i for i in range(config.k - 1, len(early.probes))
            if all(p.answer and not p.hesitant for p in early.probes[i - config.k + 1 : i + 1])
            and all(answers_equal(p.answer, early.probes[i].answer) for p in early.probes[i - config.k + 1 : i + 1])
        ]
        if early.stop_reason == "certain":
            assert settled == [len(early.probes) - 1]
            assert answers_equal(early.answer, early.probes[-1].answer)
            assert early.reasoning_tokens < config.budget
        else:
            assert settled == [] or early.stop_reason == "budget"
            assert early.stop_reason in ("finished", "budget")
