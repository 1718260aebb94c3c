"""The Governor trace reader on small hand-made folders: layout detection, type conversion, splits,
and one clear error (file and line) per malformed file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from certaindex.traces.governor import GovernorFormatError, find_runs, is_governor_layout, read_governor, read_run
from tests.governor_data import MODEL_NAME, event, probe_rows, traj, trial, write_gz, write_run


def small_run(root: Path, **kw) -> Path:
    trajs = [traj(0, "5", 300, "5"), traj(1, "\\frac{1}{2}", 200, "0.5")]
    rows = probe_rows(1, ["0.5", None, "1/2"], [True, False, True]) + probe_rows(0, ["4", "5", "5", "5"])
    return write_run(root, trajs, rows, events={0: [event(150, "5"), event(90, "4", certain=False)]},
                     deer={0: [trial(150, "5", 0.99), trial(100, "4", 0.5)], 1: []}, **kw)


def test_reads_one_run_with_typed_fields(tmp_path):
    folder = small_run(tmp_path)
    (run,) = read_governor(folder)
    assert (run.model, run.dataset, run.seed, run.model_name) == ("r1-distill-qwen-7b", "math500", 42, MODEL_NAME)
    assert run.has_events and run.has_deer
    t0, t1 = run.trajectories
    assert (t0.problem_id, t0.tokens_used, t0.final_answer, t0.target) == (0, 300, "5", "5")
    assert [p.pos for p in t0.probes] == [64, 128, 192, 256]
    assert [p.answer for p in t1.probes] == ["0.5", None, "1/2"]  # the empty CSV answer is None
    assert [p.certain for p in t1.probes] == [True, False, True]  # "True"/"False" strings converted
    assert all(isinstance(p.out_tokens, int) for p in t1.probes)
    assert [(e.pos, e.answer, e.certain) for e in t0.events] == [(90, "4", False), (150, "5", True)]  # sorted
    assert t0.events[0].triggers == ("reflection_transition",)
    assert [(x.pos, x.answer, x.confidence) for x in t0.trials] == [(100, "4", 0.5), (150, "5", 0.99)]
    assert t1.trials == [] and t1.events == []


def test_detects_a_folder_of_runs_and_a_single_run(tmp_path):
    small_run(tmp_path)
    small_run(tmp_path, name="qwen3-8b__math500__seed_43")
    (tmp_path / "notes").mkdir()
    assert is_governor_layout(tmp_path) and is_governor_layout(tmp_path / "qwen3-8b__math500__seed_43")
    assert [p.name for p in find_runs(tmp_path)] == ["qwen3-8b__math500__seed_43", "r1-distill-qwen-7b__math500__seed_42"]
    runs = read_governor(tmp_path)
    assert [(r.model, r.seed) for r in runs] == [("qwen3-8b", 43), ("r1-distill-qwen-7b", 42)]
    assert not is_governor_layout(tmp_path / "notes")


def test_plain_values_without_literal_strings_and_no_optional_files(tmp_path):
    folder = write_run(tmp_path, [traj(3, 27.0, 100, "27")], probe_rows(3, ["27"]), literal_strings=False)
    (run,) = read_governor(folder)
    (t,) = run.trajectories
    assert t.target == "27"  # a float target becomes a number string
    assert t.trials is None and not run.has_deer and not run.has_events


def test_split_filter_reads_the_manifest_beside_the_runs(tmp_path):
    small_run(tmp_path, splits={0: "dev", 1: "train"})
    (dev,) = read_governor(tmp_path, "dev")
    assert [t.problem_id for t in dev.trajectories] == [0]
    assert [t.split for t in dev.trajectories] == ["dev"]
    (train,) = read_governor(tmp_path / "r1-distill-qwen-7b__math500__seed_42", "train")  # manifest one folder up
    assert [t.problem_id for t in train.trajectories] == [1]
    assert len(read_governor(tmp_path, "all")[0].trajectories) == 2


def test_split_without_manifest_is_an_error(tmp_path):
    small_run(tmp_path)
    with pytest.raises(GovernorFormatError, match="split_manifest.json"):
        read_governor(tmp_path, "dev")
    with pytest.raises(ValueError, match="split must be one of"):
        read_governor(tmp_path, "test")


def _rewrite(path: Path, lines: list[str]) -> None:
    write_gz(path, "".join(line + "\n" for line in lines))


def _lines(path: Path) -> list[str]:
    return gzip.open(path, "rt").read().splitlines()


@pytest.mark.parametrize(
    "file, line, edit, message",
    [
        ("trajectories.jsonl.gz", 2, lambda s: s[:-3], "not valid JSON"),
        ("trajectories.jsonl.gz", 1, lambda s: s.replace('"tokens_used": 300', '"tokens_used": "many"'), "tokens_used is not an integer"),
        ("trajectories.jsonl.gz", 2, lambda s: s.replace('"target": "\\\\frac{1}{2}", ', ""), "missing field 'target'"),
        ("probes.csv.gz", 3, lambda s: s.replace(",128,", ",12x,"), "token_position is not an integer"),
        ("probes.csv.gz", 2, lambda s: s.replace(",True,", ",maybe,"), "is_certain is not a boolean"),
        ("probes.csv.gz", 4, lambda s: s + ",extra", "fields where the header has"),
        ("probes.csv.gz", 5, lambda s: "7" + s[1:], "problem_id 7 has no trajectory"),
        ("events.jsonl.gz", 1, lambda s: s.replace("'token_position': 150", "'token_position': [1,"), "not a Python literal"),
        ("deer.jsonl.gz", 1, lambda s: s.replace("'confidence': 0.99", "'confidence': 'high'"), "confidence is not a number"),
    ],
)
def test_a_malformed_line_gives_one_error_naming_file_and_line(tmp_path, file, line, edit, message):
    folder = small_run(tmp_path)
    lines = _lines(folder / file)
    lines[line - 1] = edit(lines[line - 1])
    _rewrite(folder / file, lines)
    with pytest.raises(GovernorFormatError) as info:
        read_governor(tmp_path)
    text = str(info.value)
    assert f"{folder / file}:{line}:" in text and message in text
    assert "\n" not in text


def test_unreadable_and_missing_files(tmp_path):
    folder = small_run(tmp_path)
    (folder / "probes.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GovernorFormatError, match=r"probes\.csv\.gz:1: cannot read"):
        read_run(folder)
    (folder / "probes.csv.gz").unlink()
    with pytest.raises(GovernorFormatError, match=r"probes\.csv\.gz: missing"):
        read_run(folder)


def test_paths_that_are_not_governor_folders(tmp_path):
    with pytest.raises(GovernorFormatError, match="no such file"):
        find_runs(tmp_path / "nope")
    with pytest.raises(GovernorFormatError, match="holds no"):
        find_runs(tmp_path)
    (tmp_path / "x.jsonl").write_text("{}")
    with pytest.raises(GovernorFormatError, match="not a Governor folder"):
        find_runs(tmp_path / "x.jsonl")


def test_bad_split_manifest(tmp_path):
    small_run(tmp_path)
    (tmp_path / "split_manifest.json").write_text(json.dumps({"assignments": [{"benchmark": "math500"}]}))
    with pytest.raises(GovernorFormatError, match="not a split manifest"):
        read_governor(tmp_path, "dev")


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "governor" / "r1-distill-qwen-7b__aime24__seed_42"


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared Governor traces are not next to the repository")
def test_reads_one_small_real_folder():
    (run,) = read_governor(SHARED)
    assert run.model_name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" and run.has_deer and run.has_events
    for t in run.trajectories:
        assert t.probes and all(a.pos < b.pos for a, b in zip(t.probes, t.probes[1:]))
        assert all(p.pos % 64 == 0 for p in t.probes)
        assert t.trials is not None
