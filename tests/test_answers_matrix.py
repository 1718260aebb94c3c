"""Vector and matrix answers: a row break ``\\\\`` followed by a space is not a thin space.

The Governor traces' MATH500 targets write vectors as ``\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}``;
``canonical_answer`` once read the spaced row breaks as one expression (``Matrix([[-23]])``), so
right answers were graded wrong."""

from __future__ import annotations

import pytest

from certaindex.core.answers import answers_equal, canonical_answer

SPACED = r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}"


@pytest.mark.parametrize("spelling", [
    r"\begin{pmatrix}-2\\-14\\-7\end{pmatrix}",
    r"\begin{pmatrix} -2\\ -14\\ -7 \end{pmatrix}",
    r"\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}",
    r"\begin{bmatrix} -2 \\ -14 \\ -7 \end{bmatrix}",
    r"\left(\begin{array}{c} -2 \\ -14 \\ -7 \end{array}\right)",
    r"\boxed{\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}}",
])
def test_vector_spellings_are_one_answer(spelling):
    assert answers_equal(spelling, SPACED)
    assert canonical_answer(spelling) == canonical_answer(SPACED)


def test_spaced_vector_keeps_its_entries():
    assert canonical_answer(SPACED) == canonical_answer(r"\begin{pmatrix}-2\\-14\\-7\end{pmatrix}")
    assert canonical_answer(SPACED) != canonical_answer("-23")


@pytest.mark.parametrize("other", [
    r"\begin{pmatrix} -2 \\ -14 \\ 7 \end{pmatrix}",
    r"\begin{pmatrix} -14 \\ -2 \\ -7 \end{pmatrix}",
    r"\begin{pmatrix} -2 \\ -14 \end{pmatrix}",
    "-23",
])
def test_different_vectors_differ(other):
    assert not answers_equal(other, SPACED)


def test_spaced_matrix_rows():
    a = r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"
    assert answers_equal(a, r"\begin{pmatrix}1&2\\3&4\end{pmatrix}")
    assert not answers_equal(a, r"\begin{pmatrix} 1 & 2 \\ 4 & 3 \end{pmatrix}")


def test_thin_spaces_still_ignored():
    assert answers_equal(r"1\,000", "1000")
    assert answers_equal(r"3\ \text{cm}", "3")
