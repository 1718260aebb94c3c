from __future__ import annotations

import pytest

from certaindex.core.answers import canonical_answer
from certaindex.core.datasets import DatasetError, load_dataset


def test_shipped_gsm8k_is_the_whole_test_split_with_numeric_gold_answers() -> None:
    problems = load_dataset("gsm8k")
    assert len(problems) == 1319
    assert len({p.id for p in problems}) == 1319
    assert problems[0].question.startswith("Janet")
    assert problems[0].answer == "18"
    assert all(canonical_answer(p.answer) is not None for p in problems)


def test_slices_select_problems() -> None:
    assert [p.id for p in load_dataset("gsm8k", limit=2, offset=3)] == [p.id for p in load_dataset("gsm8k")[3:5]]


def test_jsonl_file_with_a_bad_line_names_the_line(tmp_path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "oops"\n')
    with pytest.raises(DatasetError, match=r"set.jsonl:2: not valid JSON"):
        load_dataset(str(path))
    path.write_text('{"question": "1+1?"}\n')
    with pytest.raises(DatasetError, match=r":1: missing 'answer'"):
        load_dataset(str(path))
    path.write_text('["1+1?", "2"]\n')
    with pytest.raises(DatasetError, match=r"set.jsonl:1: expected a JSON object, got list$"):
        load_dataset(str(path))


@pytest.mark.parametrize(("kwargs", "fragment"), [({"limit": 0}, "limit"), ({"offset": -1}, "offset"), ({"offset": 10**6}, "selects none")])
def test_bad_slices_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(DatasetError, match=fragment):
        load_dataset("gsm8k", **kwargs)
