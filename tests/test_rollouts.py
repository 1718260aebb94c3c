"""The rollouts reader (Governor's rollouts8 layout) and the answer book, on hand-made files."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from certaindex.traces.rollouts import (
    PROBE_SUFFIX_TOKENS,
    AnswerBook,
    Grader,
    RolloutsError,
    group_problems,
    probe_token_counter,
    read_rollouts,
)


def record(problem_id: int = 1, rollout_id: int = 0, answers: tuple[str, ...] = ("3", "3"), **extra) -> dict:
    probes = [
        {"probe_id": i + 1, "token_position": 128 * (i + 1), "probe_text": a + "} \\]", "answer": a}
        for i, a in enumerate(answers)
    ]
    base = {
        "problem_id": problem_id, "rollout_id": rollout_id, "dataset": "math500", "problem": "p",
        "target": "3", "tokens_used": 128 * len(answers) + 50, "finished_naturally": True,
        "final_answer": "3", "final_correct": True, "probes": probes,
    }
    base.update(extra)
    return base


def write(path: Path, records: list, gz: bool = True) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_string_fields_are_converted_like_native_ones(tmp_path: Path) -> None:
    native = record()
    stringy = record(rollout_id=1, tokens_used="306", finished_naturally="False", final_correct="True",
                     problem_id="1", probes=repr(native["probes"]))
    rollouts = read_rollouts(write(tmp_path / "t.jsonl.gz", [native, stringy]))
    a, b = rollouts
    assert (b.problem_id, b.rollout_id, b.tokens_used, b.finished_naturally, b.source_correct) == (1, 1, 306, False, True)
    assert a.probes == b.probes
    assert [p.position for p in a.probes] == [128, 256]
    assert all(p.prefill_tokens == PROBE_SUFFIX_TOKENS and p.decode_tokens >= 1 for p in a.probes)


def test_plain_jsonl_and_empty_answers_are_read(tmp_path: Path) -> None:
    r = record(final_answer="  ", answers=("", "7"))
    (rollout,) = read_rollouts(write(tmp_path / "t.jsonl", [r], gz=False))
    assert rollout.final_answer is None
    assert [p.answer for p in rollout.probes] == [None, "7"]


def test_hesitant_probe_text_is_flagged(tmp_path: Path) -> None:
    r = record()
    r["probes"][0]["probe_text"] = "3} \\]\n\nWait, hold on"
    (rollout,) = read_rollouts(write(tmp_path / "t.jsonl.gz", [r]))
    assert [p.hesitant for p in rollout.probes] == [True, False]


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        (json.dumps({k: v for k, v in record().items() if k != "target"}), "missing field 'target'"),
        (json.dumps(record(tokens_used="many")), "tokens_used must be an integer"),
        (json.dumps(record(finished_naturally="maybe")), "finished_naturally must be True or False"),
        (json.dumps(record(probes="[{'probe_id': 1,")), "not a Python literal"),
        (json.dumps(record(tokens_used=10)), "beyond tokens_used"),
    ],
)
def test_a_malformed_line_is_one_error_naming_file_and_line(tmp_path: Path, bad: str, fragment: str) -> None:
    path = write(tmp_path / "t.jsonl.gz", [record(), "", bad])
    with pytest.raises(RolloutsError) as info:
        read_rollouts(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and fragment in message and "\n" not in message


def test_missing_empty_duplicate_and_truncated_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RolloutsError, match="no such file"):
        read_rollouts(tmp_path / "absent.jsonl.gz")
    with pytest.raises(RolloutsError, match="holds no rollouts"):
        read_rollouts(write(tmp_path / "empty.jsonl.gz", []))
    with pytest.raises(RolloutsError, match=":2: rollout .* appears twice"):
        read_rollouts(write(tmp_path / "dup.jsonl.gz", [record(), record()]))
    whole = gzip.compress(("\n".join(json.dumps(record(rollout_id=i)) for i in range(50)) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RolloutsError, match="cannot read"):
        read_rollouts(tmp_path / "cut.jsonl.gz")


def test_problems_group_by_dataset_and_id_and_refuse_mixed_targets(tmp_path: Path) -> None:
    rows = [record(rollout_id=1), record(rollout_id=0), record(dataset="aime24", target="5")]
    problems = group_problems(read_rollouts(write(tmp_path / "t.jsonl.gz", rows)))
    assert [p.key for p in problems] == [("aime24", 1), ("math500", 1)]
    assert [r.rollout_id for r in problems[1].rollouts] == [0, 1]
    mixed = [record(rollout_id=0), record(rollout_id=1, target="4")]
    with pytest.raises(RolloutsError, match="different targets"):
        group_problems(read_rollouts(write(tmp_path / "m.jsonl.gz", mixed)))


def test_probe_counter_counts_a_stop_token_below_the_cap() -> None:
    cost, how = probe_token_counter(max_probe_tokens=10)
    assert how
    short, long_ = cost("3} \\]"), cost("204} \\]\n\n**Final Answer**\n and then much more text here")
    assert 2 <= short <= 10
    assert long_ == 10  # capped, no stop token


def test_answer_book_puts_equivalent_answers_in_one_class_and_grades_once() -> None:
    grader = Grader()
    book = AnswerBook("\\frac{1}{2}", ["0.5", "1/2", "\\frac{1}{2}", "2", None, "0.50"], grader)
    assert book.rep("1/2") == book.rep("0.5") == book.rep("0.50") == "0.5"
    assert book.rep("2") == "2" and book.rep(None) is None
    assert book.correct("1/2") and not book.correct("2") and not book.correct(None)
    with pytest.raises(KeyError, match="not in this problem's book"):
        book.rep("17")
    calls = grader.calls
    AnswerBook("\\frac{1}{2}", ["0.5", "2"], grader)
    assert grader.calls == calls  # every pair was cached


def test_grader_times_out_a_slow_comparison_as_unequal() -> None:
    def slow(a: str | None, b: str | None) -> bool:
        time.sleep(0.5)
        return True

    grader = Grader(timeout_s=0.05, equal=slow, canonical=None)
    assert grader.equal("x", "y") is False
    assert grader.timeouts == 1
