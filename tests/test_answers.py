"""Tests for certaindex.core.answers: extraction tables, equivalence tables, properties and threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certaindex.core.answers import (
    HESITATION_WORDS,
    answers_equal,
    canonical_answer,
    extract_answer,
    extract_boxed,
    is_hesitant,
)

# ---------------------------------------------------------------------------------------------------
# extract_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}} done", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{x^{2^{3}}+{1}}", r"x^{2^{3}}+{1}"),
        (r"first \boxed{3}, then \boxed{4}, finally \boxed{5}", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed {8}", "8"),
        (r"\boxed{ 9 }", "9"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{\text{(B)}}", r"\text{(B)}"),
        (r"\boxed{}", ""),
        (r"\boxed{\boxed{5}}", "5"),  # nested boxes: the last one opened
    ],
)
def test_extract_boxed(text: str, expected: str) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no box at all, the answer is 3",
        r"\boxed{12",  # truncated generation
        r"\boxed{\frac{1}{2}",  # nested brace closed, outer not
        r"\boxed{3} but then \boxed{4",  # the last box is unclosed: that is what counts
        r"\boxed{\{1, 2\}",
        r"boxed{3}",  # no backslash: not a LaTeX box
    ],
)
def test_extract_boxed_none(text: str) -> None:
    assert extract_boxed(text) is None


# ---------------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1. the last closed box wins over everything
        (r"So the result is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{3} hmm, no: \boxed{4}", "4"),
        ("**Final Answer**\n\n\\[ \\boxed{42} \\]", "42"),
        (r"The answer is 7. Final: \boxed{8}", "8"),
        (r"\boxed{3} then I wrote \boxed{4", "3"),  # an unclosed last box is skipped
        (r"\boxed{} and \boxed{5}", "5"),
        (r"\boxed{5} and \boxed{}", "5"),  # an empty box is no answer
        # 2. Final Answer markers
        ("Work...\n**Final Answer**\n$\\frac{3}{4}$", r"\frac{3}{4}"),
        ("**Final Answer:** 17", "17"),
        ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),
        ("Final answer: 12 apples", "12 apples"),
        ("### Final Answer\n\n-5", "-5"),
        ("**Final Answer**\nThe total cost is 18 dollars.", "18"),
        ("**Final Answer**: The answer is 42", "42"),
        ("**Final Answer**\nno numeric answer can be given", "no numeric answer can be given"),
        ("Final Answer: \\[ x = 3 \\] and 99 more", "x = 3"),
        ("The answer is 3.\nFinal Answer: 4", "4"),
        # 3. "the answer is" / "answer:"
        ("The answer is 7.", "7"),
        ("So the answer is $\\frac{3}{4}$.", r"\frac{3}{4}"),
        ("the answer is **12**.", "12"),
        ("THE ANSWER IS 2.5. Then 99 more.", "2.5"),
        ("**Answer:** 18 dollars", "18 dollars"),
        ("answer: -3\nand later 99", "-3"),
        ("The answer is 5. Wait, the answer is 6.", "6"),
        ("The correct answer is \\(x = 2\\)", "x = 2"),
        # 4. the last number
        ("We get 3 and then 5", "5"),
        ("x = -5 in the end", "-5"),
        ("the temperature range is 3-5", "5"),  # a minus after a digit is a subtraction
        ("it is 3.25", "3.25"),
        ("it costs 1,234 in total, so 1,234,567.", "1,234,567"),
        ("we get 3/4.", "3/4"),
        ("so $\\frac{5}{8}$ remains", r"\frac{5}{8}"),
        ("values (1, 2)", "2"),
        ("-7", "-7"),
        ("  42  ", "42"),
        # a truncated box: its content is ignored, numbers before it still count
        ("we get 12, so \\boxed{12", "12"),
        ("we try 7 and conclude \\boxed{123", "7"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t", "no numbers here at all", "Let me think about it", r"\boxed{", r"\boxed{}", r"we say \boxed{12"],
)
def test_extract_answer_none(text: str) -> None:
    assert extract_answer(text) is None


# ---------------------------------------------------------------------------------------------------
# canonical_answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("42", "42"),
        ("  42 ", "42"),
        ("-7", "-7"),
        ("3.0", "3"),
        ("3.50", "7/2"),
        ("0.5", "1/2"),
        ("1/2", "1/2"),
        ("1 / 2", "1/2"),
        (r"\frac{1}{2}", "1/2"),
        (r"\dfrac12", "1/2"),
        (r"\tfrac{1}{2}", "1/2"),
        (r"\frac{2}{4}", "1/2"),
        (r"-\frac{3}{4}", "-3/4"),
        (r"\frac{-3}{4}", "-3/4"),
        ("$18$", "18"),
        ("$18", "18"),
        (r"\$18.00", "18"),
        ("18 dollars", "18"),
        ("5 cm", "5"),
        (r"5 \text{ cm}", "5"),
        (r"\text{5 cm}", "5"),
        (r"5\mathrm{~cm}^2", "5"),
        ("x = 3", "3"),
        ("x=3", "3"),
        ("y = 1,000", "1000"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        (r"10,\!080", "10080"),  # a comma then a negative thin space: one number, not the set {10, 80}
        (r"1{,}\!000", "1000"),
        (r"1\,000", "1000"),
        ("1,234.5", "2469/2"),
        ("50%", "50"),
        (r"50\%", "50"),
        (r"30^\circ", "30"),
        (r"\boxed{7}", "7"),
        ("**7**.", "7"),
        ("0.33", "33/100"),
        (r"\sqrt{4}", "2"),
        (r"\sqrt{2}", "sqrt(2)"),
        (r"2\sqrt{3}", "2*sqrt(3)"),
        (r"\frac{\pi}{2}", "pi/2"),
        ("3 pi", r"3*pi"),
        ("Yes", "yes"),
        ("(A)", "a"),
        (r"\text{(A)}", "a"),
        ("Some   Words Here", "some words here"),
    ],
)
def test_canonical_answer(answer: str, expected: str) -> None:
    assert canonical_answer(answer) == expected


@pytest.mark.parametrize("answer", [None, "", "   ", "$$", r"\boxed{}"])
def test_canonical_answer_empty(answer: str | None) -> None:
    assert canonical_answer(answer) is None


def test_canonical_answer_groups_equal_forms() -> None:
    assert len({canonical_answer(a) for a in ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", "$0.50$"]}) == 1
    assert len({canonical_answer(a) for a in ["18", "18 dollars", "$18", r"\$18.00", "x = 18"]}) == 1
    assert canonical_answer("(1,2)") == canonical_answer("(1, 2)")
    assert canonical_answer("x^2+1") == canonical_answer("1 + x^2")


def test_canonical_answer_keeps_distinct_values_apart() -> None:
    keys = [canonical_answer(a) for a in ["12", "21", "1/2", "2", "3", "30", "0.33", r"\frac{1}{3}", "yes", "sey"]]
    assert len(set(keys)) == len(keys)


# ---------------------------------------------------------------------------------------------------
# answers_equal


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1/2", "0.5"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", r"\frac{1}{2}"),
        (r"\dfrac12", "0.5"),
        ("x=3", "3"),
        ("x = 3", "3.0"),
        ("18", "18 dollars"),
        ("18", "$18"),
        ("18", r"\$18.00"),
        ("18 dollars", r"\$18.00"),
        ("1,000", "1000"),
        (r"10,\!080", "10080"),
        (r"\sqrt{4}", "2"),
        ("(1,2)", "(1, 2)"),
        (r"\{1,2\}", r"\{2, 1\}"),
        (r"\sqrt{8}", r"2\sqrt{2}"),
        (r"\pi/2", r"\frac{\pi}{2}"),
        ("x^2+1", "1+x^2"),
        ("2x", "x \\cdot 2"),
        ("1.414214", r"\sqrt{2}"),  # math_verify compares to 6 decimals
        ("50%", "50"),
        ("Yes", "yes"),
        ("(A)", r"\text{A}"),
        ("-3/4", r"-\frac{3}{4}"),
        ("7", "7"),
    ],
)
def test_answers_equal(a: str, b: str) -> None:
    assert answers_equal(a, b)
    assert answers_equal(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("12", "21"),
        ("1/2", "2"),
        ("3", "30"),
        ("0.33", "1/3"),
        ("0.33", r"\frac{1}{3}"),
        ("0.333333", r"\frac{1}{3}"),  # plain numbers are compared exactly
        ("3", "-3"),
        ("1,000", "1"),
        ("(1,2)", "(2,1)"),
        (r"\sqrt{2}", "1.41"),
        (r"\sqrt{2}", r"\sqrt{3}"),
        ("x^2+1", "x^2-1"),
        ("yes", "sey"),  # words are not products of symbols
        ("yes", "no"),
        ("no", "on"),
        ("(A)", "(B)"),
        ("0.5", "50%"),  # percent is stripped, so 50% is the number 50
        (r"\frac{1}{0}", r"\frac{2}{0}"),
        ("x = 3, y = 4", "3"),
    ],
)
def test_answers_not_equal(a: str, b: str) -> None:
    assert not answers_equal(a, b)
    assert not answers_equal(b, a)


@pytest.mark.parametrize(("a", "b"), [(None, None), (None, "3"), ("3", None), ("", ""), ("", "3"), ("  ", "  ")])
def test_missing_answers_never_equal(a: str | None, b: str | None) -> None:
    assert not answers_equal(a, b)


def _forms_of_int(n: int) -> list[str]:
    return [str(n), f"{n}.0", f"\\frac{{{2 * n}}}{{2}}", f"{n:,}", f"${n}$", f"{2 * n}/2", f"x = {n}"]


@settings(max_examples=60, deadline=None)
@given(st.integers(-(10**7), 10**7), st.data())
def test_int_forms_equal_symmetric_and_share_key(n: int, data: st.DataObject) -> None:
    forms = _forms_of_int(n)
    a = data.draw(st.sampled_from(forms))
    b = data.draw(st.sampled_from(forms))
    assert answers_equal(a, b)
    assert answers_equal(b, a)
    assert canonical_answer(a) == canonical_answer(b) == str(n)


@settings(max_examples=60, deadline=None)
@given(st.integers(-1000, 1000), st.integers(-1000, 1000), st.data())
def test_distinct_ints_differ_in_every_form(n: int, m: int, data: st.DataObject) -> None:
    a = data.draw(st.sampled_from(_forms_of_int(n)))
    b = data.draw(st.sampled_from(_forms_of_int(m)))
    assert answers_equal(a, b) == (n == m)
    assert answers_equal(a, b) == answers_equal(b, a)
    assert (canonical_answer(a) == canonical_answer(b)) == (n == m)


@settings(max_examples=60, deadline=None)
@given(st.integers(-500, 500), st.integers(1, 500), st.data())
def test_fraction_forms_equal_and_share_key(p: int, q: int, data: st.DataObject) -> None:
    value = Fraction(p, q)
    forms = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{3 * p}}}{{{3 * q}}}", f"{3 * p}/{3 * q}"]
    if 1000 % value.denominator == 0:  # a terminating decimal with at most 3 places
        forms.append(f"{float(value):.3f}")
    a = data.draw(st.sampled_from(forms))
    b = data.draw(st.sampled_from(forms))
    assert answers_equal(a, b) and answers_equal(b, a)
    assert canonical_answer(a) == canonical_answer(b) == str(value)


# ---------------------------------------------------------------------------------------------------
# threads and hostile inputs


def test_answers_equal_in_worker_threads() -> None:
    from math_verify import parse

    # The trap this module avoids: math_verify's default signal-based timeout fails off the main thread.
    with ThreadPoolExecutor(max_workers=2) as pool:
        with pytest.raises(ValueError):
            pool.submit(parse, "$x + 17$").result()

    # Strings used nowhere else, so parsing, simplify and verify all run in the worker threads.
    cases = [
        ((r"\sqrt{50}", r"5\sqrt{2}"), True),  # simplify gives equal keys
        (("7.071068", r"\sqrt{50}"), True),  # needs math_verify.verify
        ((r"\sqrt{50}", "7"), False),
        ((r"\frac{\pi}{6}", r"\pi/6"), True),
        ((r"x^3 - 1", r"(x-1)(x^2+x+1)"), True),
        (("61/3", "20.33"), False),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda pair: answers_equal(*pair), [pair for pair, _ in cases] * 3))
    assert results == [want for _, want in cases] * 3


def test_hostile_inputs_finish() -> None:
    # sympy would compute 9^(9^9) forever, with no timeout to stop it in a thread, and a careless
    # regex or brace scan goes exponential or quadratic on these strings. Run them in a subprocess
    # so that a regression fails the test instead of hanging the suite.
    code = textwrap.dedent(
        r"""
        import time
        from certaindex.core.answers import answers_equal, canonical_answer, extract_answer
        start = time.monotonic()
        assert answers_equal(r"9^{9^{9}}", r"9^{9^{9}}")
        assert not answers_equal(r"9^{9^{9}}", "3")
        assert not answers_equal(r"10^{10^{10}}", r"10^{\frac{10^{10}}{1}}")
        assert not answers_equal(r"(10^{10})!", "2")
        assert not answers_equal(r"2^{1000000}", r"4^{500000}")
        assert canonical_answer(r"9^{9^{9}}") == r"9^{9^{9}}"
        assert canonical_answer("5 " + "a" * 300 + "1") == "5 " + "a" * 300 + "1"
        assert canonical_answer("1" * 50000 + "x") == "1" * 50000 + "x"
        assert extract_answer("\\boxed{" * 5000) is None
        assert extract_answer("\\boxed{" * 5000 + "7" + "}" * 5000) == "7"  # the last box opened
        print("ok", time.monotonic() - start)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    status, seconds = done.stdout.split()
    assert status == "ok"
    assert float(seconds) < 10


# ---------------------------------------------------------------------------------------------------
# hesitation


def test_hesitation_words() -> None:
    assert HESITATION_WORDS == ("wait", "hmm", "but", "however", "alternatively", "let me", "double-check", "recheck")


@pytest.mark.parametrize(
    "text",
    [
        "42. Wait, that is wrong.",
        "wait",
        "Hmm, 42?",
        "hmmm",
        "42 but maybe 43",
        "BUT",
        "However, 7",
        "Alternatively: 9",
        "Let me see: 4",
        "let  me\nthink",
        "I should double-check this",
        "recheck: 5",
        "5 (but)",
    ],
)
def test_is_hesitant(text: str) -> None:
    assert is_hesitant(text)


@pytest.mark.parametrize(
    "text",
    ["", "42", r"\boxed{42}", "butter costs 5", "awaited result", "waiting", "rebuttal", "letme", "The answer is 7."],
)
def test_is_not_hesitant(text: str) -> None:
    assert not is_hesitant(text)
