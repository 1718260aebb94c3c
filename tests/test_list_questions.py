"""The list-asking detector of the partial-answers study (issue 19 item 6), on hand-written problems."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "list_questions", Path(__file__).resolve().parents[1] / "benchmarks" / "list_questions.py")
_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_MODULE)
asks_for_several = _MODULE.asks_for_several


@pytest.mark.parametrize("problem", [
    "Solve x^2 = 4. Enter all the solutions, separated by commas.",
    "Find the integer roots of p(x). Enter them separated by a comma.",
    "Give your answer as a comma-separated list.",
    "Find all real numbers $x$ such that $x^3 = x$.",
    "Determine all pairs $(a, b)$ of positive integers with $a + b = 3$.",
    "What are all the possible values of $k$?",
    "List all primes below 10.",
    "FIND ALL solutions.",
])
def test_a_list_is_asked(problem: str) -> None:
    assert asks_for_several(problem)


@pytest.mark.parametrize("problem", [
    "Compute $2 + 2$.",
    "Find the sum of all values of $x$ such that $x^2 = 4$.",
    "Find the product of all the roots of $x^2 - 5x + 6$.",
    "What is the largest of all the solutions of $x^2 = 9$?",
    "How many of all the integers below 100 are prime?",
    "Find the number of all ordered pairs $(a, b)$ with $a + b = 3$.",
    "",
])
def test_one_answer_is_asked(problem: str) -> None:
    assert not asks_for_several(problem)


def test_an_aggregate_in_an_earlier_sentence_does_not_hide_a_later_list() -> None:
    assert asks_for_several("The sum of two numbers is 5. Find all such numbers.")


def test_no_text_asks_for_nothing() -> None:
    assert not asks_for_several(None)
