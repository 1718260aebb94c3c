"""ReplayEngine: solve_cot on recorded traces equals the live run, and unservable requests are refused."""

from __future__ import annotations

import dataclasses

import pytest

from certaindex.core.datasets import Problem
from certaindex.engines.base import EngineError, GenerationRequest
from certaindex.traces.replay import ReplayEngine
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, PROBE_STOPS
from certaindex.programs.cot import solve_cot
from certaindex.traces import TraceHeader, TraceSet, TraceSettings, record_one
from tests.fakes import ScriptedFakeEngine
from tests.conftest import UTF8_SLACK

G = 5


def script(n: int, tail: str = "") -> list[str]:
    return [f"t{i} " for i in range(n)] + ([tail] if tail else [])


class EndsOnBoundaryFake(ScriptedFakeEngine):
    """Like llama.cpp when the model ends exactly at a chunk boundary: the full chunk reports "length",
    and the next request returns no tokens with "stop"."""

    async def generate(self, request: GenerationRequest):
        completion = await super().generate(request)
        c = completion.first
        if (c.finish_reason == "stop" and c.completion_tokens == request.max_tokens and not request.stop
                and not request.prompt.endswith(DEFAULT_PROBE_SUFFIX)):
            return dataclasses.replace(completion, choices=(dataclasses.replace(c, finish_reason="length"),))
        return completion


# Each case builds a fresh "live" engine (the scripted fake keeps per-question state).
CASES = {
    "settles late": dict(reasoning=script(60, "so \\boxed{42}"), probe_reply=lambda n: ["1" if n < 22 else "42", "}"]),
    "never settles": dict(reasoning=script(33, "\\boxed{7}"), probe_reply=lambda n: [str(n), "}"]),
    "budget": dict(reasoning=[], ends_naturally=False, probe_reply=lambda n: [str(n // 20), "}"]),
    "hesitant": dict(reasoning=script(24, "\\boxed{3}"), probe_reply=lambda n: ["3} wait" if n < 15 else "3", "}"]),
    "unclosed": dict(reasoning=script(17, "\\boxed{5}"), probe_reply=lambda n: ["4", "2", "2", "2", "2"]),
    "thinking": dict(reasoning=script(38), thinking=True, probe_reply=lambda n: ["42" if n > 12 else "6", "}"]),
    "ends on a boundary": dict(reasoning=script(19, "x"), probe_reply=lambda n: ["9", "}"]),
    "no tokens at the end": dict(cls=EndsOnBoundaryFake, reasoning=script(19, "\\boxed{9}"),
                                 probe_reply=lambda n: [str(n // 10), "}"]),
}


def live_engine(name: str) -> ScriptedFakeEngine:
    spec = dict(CASES[name])
    return spec.pop("cls", ScriptedFakeEngine)(**spec)
QUESTIONS = {name: f"Case {name}: what is the answer?" for name in CASES}
SETTINGS = TraceSettings(granularity=G, budget=60, probe_tokens=4, logprobs=None)


@pytest.fixture(scope="module")
async def traces() -> TraceSet:
    records = [
        await record_one(live_engine(name), Problem(name, QUESTIONS[name], "42"), SETTINGS)
        for name in CASES
    ]
    return TraceSet(TraceHeader(model="fake", engine="fake:scripted", settings=SETTINGS), records)


@pytest.mark.parametrize("name", list(CASES))
async def test_replay_equals_live_for_every_setting(traces, name) -> None:
    replay = ReplayEngine(traces)
    checked = 0
    for m in (1, 2, 3):
        for k in (1, 2, 3):
            for budget in (60, 30):
                config = SETTINGS.cot_config(probe_interval=m * G, k=k, budget=budget)
                live = await solve_cot(live_engine(name), QUESTIONS[name], config)
                replayed = await solve_cot(replay, QUESTIONS[name], config)
                # Everything: answer, stop reason, reasoning, every probe, every token count.
                assert replayed.to_dict() == live.to_dict(), (name, m, k, budget)
                checked += 1
    full = SETTINGS.cot_config(early_exit=False, probe_interval=2 * G)
    assert (await solve_cot(replay, QUESTIONS[name], full)).to_dict() == (
        await solve_cot(live_engine(name), QUESTIONS[name], full)
    ).to_dict()
    assert checked == 18


async def test_a_final_chunk_without_tokens_is_recorded_and_replayed(traces) -> None:
    record = next(r for r in traces.records if r.id == "no tokens at the end")
    assert [c.tokens for c in record.chunks] == [5, 5, 5, 5, 0]
    assert record.chunks[3].probe is not None and record.chunks[4].probe is None and record.stop == "finished"


async def test_stop_reasons_are_all_covered(traces) -> None:
    replay = ReplayEngine(traces)
    reasons = set()
    for name in CASES:
        for k in (1, 5):
            reasons.add((await solve_cot(replay, QUESTIONS[name], SETTINGS.cot_config(k=k))).stop_reason)
    assert reasons == {"certain", "finished", "budget"}


async def test_stream_and_n_copies(traces) -> None:
    replay = ReplayEngine(traces)
    prompt = replay.render_chat([{"role": "system", "content": SETTINGS.system_prompt},
                                 {"role": "user", "content": QUESTIONS["settles late"]}])
    pieces = [d async for d in replay.stream(GenerationRequest(prompt=prompt, max_tokens=2 * G, seed=0))]
    assert pieces[-1].finish_reason == "length" and sum(p.tokens for p in pieces) == 2 * G
    two = await replay.generate(GenerationRequest(prompt=prompt, max_tokens=G, n=2))
    assert len(two.choices) == 2 and two.choices[0] == two.choices[1]


async def test_several_samples_of_a_problem_are_told_apart_by_seed() -> None:
    s = dataclasses.replace(SETTINGS, temperature=0.7, samples=2)
    problem = Problem("p", "Two samples?", "42")
    short = await record_one(ScriptedFakeEngine(reasoning=script(6, "\\boxed{1}")), problem, s, sample=0)
    long = await record_one(ScriptedFakeEngine(reasoning=script(14, "\\boxed{2}")), problem, s, sample=1)
    replay = ReplayEngine(TraceSet(TraceHeader("fake", "fake", s), [short, long]))
    results = [await solve_cot(replay, problem.question, s.cot_config(k=9, seed=r.seed)) for r in (short, long)]
    assert [r.answer for r in results] == ["1", "2"]
    assert [r.reasoning_tokens for r in results] == [7, 15]


# ------------------------------------------------------------------------------------- refusals


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SETTINGS.system_prompt}, {"role": "user", "content": question}]


async def test_refuses_what_it_cannot_serve(traces) -> None:
    replay = ReplayEngine(traces)
    q = QUESTIONS["settles late"]
    prompt = replay.render_chat(messages(q))
    record = next(r for r in traces.records if r.id == "settles late")
    with pytest.raises(EngineError, match="no recorded trace for the question"):
        replay.render_chat(messages("An unrecorded question?"))
    with pytest.raises(EngineError, match="recorded system prompt"):
        replay.render_chat([{"role": "user", "content": q}])
    with pytest.raises(EngineError, match="no recorded trace has the prompt"):
        await replay.generate(GenerationRequest(prompt="something else entirely", max_tokens=G))
    # A probe interval that is not a multiple of g: the chunk request ends mid-chunk.
    with pytest.raises(EngineError, match="does not end at a recorded chunk boundary.*multiples of g"):
        await solve_cot(replay, q, SETTINGS.cot_config(probe_interval=7))
    # A probe between two boundaries.
    mid = record.chunks[0].text + record.chunks[1].text[:3]
    with pytest.raises(EngineError, match="probe after .* not at a recorded chunk boundary"):
        await replay.generate(GenerationRequest(prompt=prompt + mid + DEFAULT_PROBE_SUFFIX, max_tokens=4, stop=PROBE_STOPS))
    with pytest.raises(EngineError, match="not a recorded continuation"):
        await replay.generate(GenerationRequest(prompt=prompt + "something the model never wrote", max_tokens=G))
    # Past the recorded budget, at another temperature, with logprobs, with a longer probe that was cut.
    with pytest.raises(EngineError, match="recorded budget of 60"):
        await solve_cot(replay, QUESTIONS["budget"], SETTINGS.cot_config(budget=100, k=5))
    with pytest.raises(EngineError, match="recorded at temperature 0.0, not 0.5"):
        await solve_cot(replay, q, dataclasses.replace(SETTINGS.cot_config(), temperature=0.5))
    with pytest.raises(EngineError, match="not per-token logprobs"):
        await replay.generate(GenerationRequest(prompt=prompt, max_tokens=G, logprobs=3))
    unclosed = replay.render_chat(messages(QUESTIONS["unclosed"]))
    first = next(r for r in traces.records if r.id == "unclosed").chunks[0].text
    with pytest.raises(EngineError, match="cut at the recorded limit of 4 tokens"):
        await replay.generate(GenerationRequest(prompt=unclosed + first + DEFAULT_PROBE_SUFFIX, max_tokens=8, stop=PROBE_STOPS))


# ------------------------------------------------------------------------------------- real model


@pytest.mark.model
async def test_record_and_replay_on_the_embedded_model(model_path, tmp_path) -> None:
    """Two GSM8K test problems on SmolLM2-135M: record with logprobs, read them back, and replay them.

    Whether replay equals a live run is checked on the scripted engine
    (test_replay_equals_live_for_every_setting): on llama.cpp a live run after a recording can
    decode differently even on fresh engines (the text moves with the CPU and the thread count),
    so here only what holds for any text is asserted."""
    from certaindex.engines.embedded import EmbeddedEngine
    from certaindex.traces import read_traces, record_traces

    problems = [
        Problem("gsm8k-test-0", "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
                "bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily "
                "for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?", "18"),
        Problem("gsm8k-test-1", "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts "
                "in total does it take?", "3"),
    ]
    s = TraceSettings(granularity=16, budget=48, probe_tokens=8, logprobs=3)
    for problem in problems:
        path = tmp_path / f"{problem.id}.jsonl.gz"
        engine = EmbeddedEngine(model_path=model_path, logprobs=True, n_ctx=2048)
        try:
            traces = await record_traces(engine, [problem], s, path)
        finally:
            await engine.aclose()
        assert read_traces(path).records == traces.records
        record = traces.records[0]
        assert record.has_entropy() and all(c.entropy >= 0 and c.confidence > 0 for c in record.chunks if c.tokens)
        assert all(16 <= c.tokens <= 16 + UTF8_SLACK for c in record.chunks[:-1])
        config = s.cot_config(probe_interval=16, k=2)
        replay = ReplayEngine(traces)
        replayed = await solve_cot(replay, problem.question, config)
        recorded = "".join(c.text for c in record.chunks)
        assert recorded.startswith(replayed.reasoning) and replayed.reasoning_tokens <= s.budget + UTF8_SLACK
        assert replayed.total_tokens == replayed.reasoning_tokens + replayed.probe_tokens + replayed.answer_tokens
        assert all(p.tokens <= s.probe_tokens + UTF8_SLACK for p in replayed.probes)
        # A coarser interval replays too: probes every 32 recorded tokens (and the forced last one),
        # the reasoning a prefix of the recorded one.
        coarse = await solve_cot(replay, problem.question, s.cot_config(probe_interval=32, k=1))
        assert all(p.at_tokens % 32 == 0 or p.at_tokens == coarse.reasoning_tokens for p in coarse.probes)
        assert "".join(c.text for c in record.chunks).startswith(coarse.reasoning)


@pytest.mark.parametrize("name", list(CASES))
async def test_one_stream_on_recorded_traces_decides_as_the_chunked_replay(traces, name) -> None:
    """Replay streamed chunk by chunk through the one-stream path (probes on the side): the same
    answer, stop reason, reasoning, probes and token counts as the chunked replay and the live run;
    only the overrun (timing) is new, and it is counted."""
    replay = ReplayEngine(traces)
    for m in (1, 2):
        for k in (1, 2, 3):
            config = SETTINGS.cot_config(probe_interval=m * G, k=k, budget=60)
            chunked = (await solve_cot(replay, QUESTIONS[name], config)).to_dict()
            streamed = (await solve_cot(replay, QUESTIONS[name], config, main_stream=True)).to_dict()
            overrun = streamed.pop("overrun_tokens")
            assert streamed.pop("total_tokens") == chunked.pop("total_tokens") + overrun
            chunked.pop("overrun_tokens")
            assert streamed == chunked, (name, m, k)
