"""The trace format: recording, round trip, the reader's errors, and recording over HTTP."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from dataclasses import dataclass

import httpx
import pytest

from certaindex.core.datasets import Problem
from certaindex.engines.base import Completion, GenerationRequest, TokenLogprobs
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, PROBE_STOPS
from certaindex.traces import (
    FORMAT,
    VERSION,
    TraceFormatError,
    TraceHeader,
    TraceSettings,
    read_traces,
    record_one,
    record_traces,
    write_traces,
)
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"


def script(n: int, tail: str = "") -> list[str]:
    return [f"t{i} " for i in range(n)] + ([tail] if tail else [])


@dataclass
class LogprobFakeEngine(ScriptedFakeEngine):
    """The scripted fake, with top-2 logprobs {a: ln p, b: ln(1 - p)} on every generated token."""

    p: float = 0.5
    name: str = "fake:logprobs"

    async def generate(self, request: GenerationRequest) -> Completion:
        completion = await super().generate(request)
        if request.logprobs is None:
            return completion
        top = {"a": math.log(self.p), "b": math.log1p(-self.p)}
        choices = tuple(
            dataclasses.replace(c, logprobs=tuple(TokenLogprobs("a", top["a"], dict(top)) for _ in range(c.completion_tokens)))
            for c in completion.choices
        )
        return Completion(choices=choices, prompt_tokens=completion.prompt_tokens)


def settings(**changes) -> TraceSettings:
    return TraceSettings(**{"granularity": 5, "budget": 40, "logprobs": None, **changes})


async def record_set(path, problems_and_engines, s: TraceSettings):
    records = [await record_one(engine, problem, s) for problem, engine in problems_and_engines]
    header = TraceHeader(model="fake", engine="fake:scripted", settings=s, created="2025-01-01T00:00:00+00:00", dataset="unit")
    write_traces(path, header, records)
    return header, records


async def test_round_trip_keeps_every_field(tmp_path) -> None:
    s = settings()
    pairs = [
        (Problem("a", QUESTION, "42"), ScriptedFakeEngine(reasoning=script(12, "so \\boxed{42}"))),
        (Problem("b", "  Two plus two?  ", "4"), ScriptedFakeEngine(reasoning=[], ends_naturally=False,
                                                                     probe_reply=lambda n: [str(n), "}"])),
        (Problem("c", "Think: 6*7?", "42"), ScriptedFakeEngine(reasoning=script(7), thinking=True)),
    ]
    header, records = await record_set(tmp_path / "t.jsonl.gz", pairs, s)
    back = read_traces(tmp_path / "t.jsonl.gz")
    assert back.header == header and back.records == records
    first_line = json.loads(gzip.open(tmp_path / "t.jsonl.gz", "rt").readline())
    assert first_line["format"] == FORMAT and first_line["version"] == VERSION
    assert first_line["settings"]["granularity"] == 5

    finished, budget, thinking = records
    # 13 tokens in chunks of 5: 5, 5, 3; a probe after each full chunk, none after the last.
    assert [c.tokens for c in finished.chunks] == [5, 5, 3]
    assert [c.probe.at_tokens for c in finished.chunks if c.probe] == [5, 10]
    assert finished.chunks[-1].probe is None and finished.stop == "finished"
    assert finished.final.source == "reasoning" and finished.final.answer == "42" and finished.correct
    assert finished.prompt.endswith(QUESTION + "\n\n")
    # The budget: 8 chunks, a probe at every boundary including the budget, whose answer is forced.
    assert budget.question == "Two plus two?"
    assert budget.reasoning_tokens == 40 and budget.stop == "budget"
    assert [p.at_tokens for p in budget.probes()] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert budget.final.source == "budget-probe" and budget.final.answer == "40" and not budget.correct
    assert budget.full_tokens == 40 + 2
    # A reasoning model writes its answer after </think>.
    assert thinking.thinking and thinking.final.source == "after-think"
    assert thinking.final.answer == "42" and thinking.final.tokens == 3
    assert thinking.chunks[-1].tokens == 2
    assert all(c.entropy is None for r in records for c in r.chunks)


async def test_chunk_and_probe_entropy_statistics(tmp_path) -> None:
    s = settings(logprobs=2, confidence_window=2)
    engine = LogprobFakeEngine(reasoning=script(9, "\\boxed{42}"), p=0.5)
    record = await record_one(engine, Problem("a", QUESTION, "42"), s)
    assert all(r.logprobs == 2 for r in engine.calls)
    chunk = record.chunks[0]
    # p = 1/2 for two alternatives: entropy ln 2, DeepConf confidence -(ln .5 + ln .5)/2 = ln 2.
    assert chunk.entropy == pytest.approx(math.log(2))
    assert chunk.confidence == pytest.approx(math.log(2))
    assert chunk.lowest_window == pytest.approx(math.log(2))
    assert chunk.probe.entropy == pytest.approx(math.log(2))
    engine = LogprobFakeEngine(reasoning=script(9, "\\boxed{42}"), p=0.9)
    chunk = (await record_one(engine, Problem("a", QUESTION, "42"), s)).chunks[0]
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert chunk.entropy == pytest.approx(h)
    assert chunk.confidence == pytest.approx(-(math.log(0.9) + math.log(0.1)) / 2)


async def test_recorder_sends_solve_cots_requests(tmp_path) -> None:
    engine = ScriptedFakeEngine(reasoning=script(30))
    await record_one(engine, Problem("a", QUESTION, "42"), settings(seed=7, probe_tokens=9))
    chunks = [r for r in engine.calls if not r.prompt.endswith(DEFAULT_PROBE_SUFFIX)]
    probes = [r for r in engine.calls if r.prompt.endswith(DEFAULT_PROBE_SUFFIX)]
    # 30 tokens: the sixth chunk of 5 ends the script ("stop"), so no probe follows it.
    assert [r.max_tokens for r in chunks] == [5] * 6
    assert [r.seed for r in chunks] == [7 + 5 * i for i in range(6)]  # solve_cot's seed + reasoning tokens
    assert len(probes) == 5
    assert all(r.stop == PROBE_STOPS and r.temperature == 0 and r.max_tokens == 9 and r.seed == 7 for r in probes)


async def test_record_traces_writes_as_it_goes_and_reports_progress(tmp_path) -> None:
    seen = []
    engine = ScriptedFakeEngine(reasoning=script(6, "\\boxed{42}"))
    problems = [Problem("a", QUESTION, "42")]
    traces = await record_traces(engine, problems, settings(samples=2, temperature=0.5), tmp_path / "x.jsonl.gz",
                                 lambda done, total, record: seen.append((done, total, record.sample)))
    assert seen == [(1, 2, 0), (2, 2, 1)]
    assert [r.seed for r in traces.records] == [0, 1_000_003]
    assert read_traces(tmp_path / "x.jsonl.gz").records == traces.records
    assert traces.header.model == "fake:scripted"  # no model attribute: the engine's name


# ------------------------------------------------------------------------------------- reader errors


def write_lines(path, lines, compress=True):
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
async def good_lines(tmp_path):
    pairs = [(Problem(i, QUESTION if i == "a" else f"Question {i}?", "42"), ScriptedFakeEngine(reasoning=script(8)))
             for i in ("a", "b", "c")]
    await record_set(tmp_path / "good.jsonl.gz", pairs, settings())
    return gzip.open(tmp_path / "good.jsonl.gz", "rt").read().splitlines()


def test_bad_json_names_file_and_line(tmp_path, good_lines) -> None:
    lines = list(good_lines)
    lines[2] = lines[2][:40]
    path = tmp_path / "bad.jsonl.gz"
    write_lines(path, lines)
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl\.gz:3: not valid JSON"):
        read_traces(path)


def test_truncated_gzip_is_reported_and_can_be_salvaged(tmp_path, good_lines) -> None:
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress("".join(line + "\n" for line in good_lines).encode())
    path.write_bytes(data[: len(data) - 30])
    with pytest.raises(TraceFormatError, match=r"cut\.jsonl\.gz:\d+: truncated gzip file"):
        read_traces(path)
    salvaged = read_traces(path, allow_truncated=True)
    assert 0 < len(salvaged.records) <= 3


def test_wrong_version_and_format(tmp_path, good_lines) -> None:
    header = json.loads(good_lines[0])
    path = tmp_path / "v2.jsonl.gz"
    write_lines(path, [json.dumps({**header, "version": 2}), *good_lines[1:]])
    with pytest.raises(TraceFormatError, match=r"v2\.jsonl\.gz:1: trace format version 2 is not supported"):
        read_traces(path)
    write_lines(path, [json.dumps({**header, "format": "something-else"})])
    with pytest.raises(TraceFormatError, match="not a certaindex trace file"):
        read_traces(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("gold"), "missing field 'gold'"),
        (lambda r: r["chunks"][0].update(tokens="5"), r"field 'chunks\[0\]\.tokens' must be an int"),
        (lambda r: r["chunks"][0].update(tokens=4), "chunk 0 has 4 tokens; every chunk but the last has exactly g=5"),
        (lambda r: r["chunks"][0].update(probe=None), "chunk 0 has no probe"),
        (lambda r: r["chunks"][0]["probe"].pop("hesitant"), r"missing field 'chunks\[0\]\.probe\.hesitant'"),
        (lambda r: r.update(stop="tired"), "field 'stop' must be"),
        (lambda r: r["final"].update(source="guess"), "field 'final.source' must be one of"),
    ],
)
def test_missing_or_malformed_fields_name_the_line(tmp_path, good_lines, mutate, message) -> None:
    record = json.loads(good_lines[2])
    mutate(record)
    path = tmp_path / "f.jsonl.gz"
    write_lines(path, [good_lines[0], good_lines[1], json.dumps(record)])
    with pytest.raises(TraceFormatError, match=rf"f\.jsonl\.gz:3: {message}"):
        read_traces(path)


def test_other_reader_errors(tmp_path, good_lines) -> None:
    with pytest.raises(TraceFormatError, match="no such trace file"):
        read_traces(tmp_path / "missing.jsonl.gz")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TraceFormatError, match="empty trace file"):
        read_traces(tmp_path / "empty.jsonl")
    path = tmp_path / "dup.jsonl"
    write_lines(path, [good_lines[0], good_lines[1], good_lines[1]], compress=False)
    with pytest.raises(TraceFormatError, match="dup.jsonl:3: duplicate record for id 'a'"):
        read_traces(path)
    write_lines(path, good_lines, compress=False)  # plain JSONL reads too
    assert len(read_traces(path).records) == 3


# ------------------------------------------------------------------------------------- over HTTP


async def test_records_through_an_http_engine(tmp_path) -> None:
    """An OpenAI-compatible server (here a mock transport in front of the scripted fake) records the
    same traces as the engine itself, and the template is resolved before the first prompt."""
    from certaindex.engines.http import HTTPEngine

    fake = ScriptedFakeEngine(reasoning=script(11, "\\boxed{42}"))
    fake.render_chat([{"role": "system", "content": settings().system_prompt}, {"role": "user", "content": QUESTION}])

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "served-model"}]})
        if request.url.path == "/props":
            return httpx.Response(404, json={"error": "no props"})
        body = json.loads(request.content)
        completion = await fake.generate(GenerationRequest(
            prompt=body["prompt"], max_tokens=body["max_tokens"], stop=tuple(body.get("stop", ())),
            temperature=body["temperature"], seed=body.get("seed")))
        c = completion.first
        return httpx.Response(200, json={
            "choices": [{"text": c.text, "finish_reason": c.finish_reason}],
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": c.completion_tokens},
        })

    engine = HTTPEngine("http://gpu-box:8000/v1", chat_template="raw")
    engine._client = httpx.AsyncClient(base_url=engine.base_url, transport=httpx.MockTransport(handler))
    problem = Problem("a", QUESTION, "42")
    via_http = await record_traces(engine, [problem], settings(), tmp_path / "h.jsonl.gz")
    await engine.aclose()
    direct = await record_one(ScriptedFakeEngine(reasoning=script(11, "\\boxed{42}")), problem, settings())
    assert via_http.header.model == "served-model"
    assert via_http.records == [direct]
