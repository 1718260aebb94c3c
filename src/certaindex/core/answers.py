"""Final answers: pull them out of reasoning text and decide when two of them agree.

Every early-exit rule in certaindex votes on answers, so two things matter here: the same value
written two ways (``1/2``, ``0.5``, ``\\frac{1}{2}``) must land in one group, and nearby but different
values (``0.33`` and ``1/3``, ``12`` and ``21``) must not.

Text-level extraction (``\\boxed{}``, "Final Answer", "the answer is", last number) is hand-written;
deciding equivalence of mathematical forms is left to ``math_verify`` and sympy.

Everything here is a pure function and safe to call from worker threads: math_verify is always called
with its signal-based timeout disabled, and inputs that could make sympy hang (power towers, huge
factorials, very long expressions) are never handed to it. Results are memoised per string, because
the same answers are compared many times while voting.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

__all__ = [
    "HESITATION_WORDS",
    "answers_equal",
    "canonical_answer",
    "extract_answer",
    "extract_boxed",
    "is_hesitant",
]

HESITATION_WORDS: tuple[str, ...] = (
    "wait",
    "hmm",
    "but",
    "however",
    "alternatively",
    "let me",
    "double-check",
    "recheck",
)

# ---------------------------------------------------------------------------------------------------
# Extraction


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` matching an opening brace just before ``start``; None if unclosed.

    Escaped braces (``\\{``, ``\\}``, as in a boxed set) do not count towards the nesting."""
    depth = 1
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, e.g. \{ or \}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, str | None]]:
    """Every ``\\boxed{``/``\\fbox{`` in order: (start index, content or None when unclosed).

    One pass over the text matches all braces, so many unclosed boxes cost linear time."""
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return []
    close_of: dict[int, int] = {}
    stack: list[int] = []
    i, n = opens[0].end() - 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character, e.g. \{ or \}
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close_of[stack.pop()] = i
        i += 1
    found = []
    for m in opens:
        end = close_of.get(m.end() - 1)
        found.append((m.start(), None if end is None else text[m.end() : end]))
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces included.

    "Last" is the last box opened, so of nested boxes (``\\boxed{\\boxed{5}}``) the inner one counts.

    None when there is no box, or when the last one is unclosed: that is a truncated generation, and
    its content (``\\boxed{12`` of an intended ``123``) cannot be trusted. The content is stripped but
    otherwise returned as written; an empty box gives ``""``."""
    if not text:
        return None
    boxes = _boxes(text)
    if not boxes:
        return None
    content = boxes[-1][1]
    return None if content is None else content.strip()


_FINAL_MARKER = re.compile(
    r"\*\*\s*final\s+answer\s*:?\s*\*\*\s*:?"  # **Final Answer** / **Final Answer:**
    r"|^#+\s*final\s+answer\b\s*:?"  # ### Final Answer
    r"|final\s+answer\s*:",  # Final Answer:
    re.IGNORECASE | re.MULTILINE,
)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$(.+?)\$", re.DOTALL)
_ANSWER_IS = re.compile(
    r"\banswer(?:\s+is\b\s*:?|\s*:)[ \t*]*(.*?)(?=\.\s|\.$|\n|$)",  # X runs to a sentence's or line's end
    re.IGNORECASE | re.DOTALL,
)
# Numbers for the last-resort fallback: \frac{a}{b}, a/b, 1,234.5, 3.25, 42; a minus sign counts only
# where it cannot be a subtraction (not right after a word character or a closing bracket).
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?"
    r"(?:\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?<![\d.])\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?(?!\.?\d)"
    r"|(?<![\d.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]\d|\d)"
    r"|(?<![\d.])\d+(?:\.\d+)?)"
)


def _tidy(answer: str) -> str:
    """Strip what surrounds an answer in prose: whitespace, a sentence's period, bold, ``$``."""
    s = answer.strip()
    for _ in range(3):
        s = s.strip().rstrip(".").strip()
        s = re.sub(r"^\*\*(.*)\*\*$", r"\1", s, flags=re.DOTALL)
        s = s.strip("*").strip()
        m = re.fullmatch(r"\$\$(.*)\$\$|\$(.*)\$|\\\((.*)\\\)|\\\[(.*)\\\]", s, flags=re.DOTALL)
        if m:
            s = next(g for g in m.groups() if g is not None)
    return s.strip()


def _first_math(segment: str) -> str | None:
    """The first ``$...$``, ``$$...$$``, ``\\[...\\]`` or ``\\(...\\)`` expression in a segment."""
    m = _MATH_SPAN.search(segment)
    if not m:
        return None
    inner = next(g for g in m.groups() if g is not None).strip()
    return inner or None


def _last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return re.sub(r"\s*/\s*", "/", matches[-1]) if matches else None


def _after_final_marker(segment: str) -> str | None:
    """The answer in the text after a "Final Answer" marker: a math span, else its first line.

    A first line holding "the answer is X" gives X; one that reads as a sentence ("The total is 18
    dollars.") gives its last number, since a whole sentence would never match another answer."""
    math = _first_math(segment)
    if math is not None:
        return _tidy(math) or None
    for line in segment.splitlines():
        line = _tidy(line)
        if not line:
            continue
        said = [_tidy(m.group(1)) for m in _ANSWER_IS.finditer(line)]
        if said and said[-1]:
            return said[-1]
        if len(re.findall(r"(?<![\\A-Za-z])[A-Za-z]{2,}", line)) >= 4:
            return _last_number(line) or line
        return line
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a model's text, or None when nothing answer-like is found.

    Priority, first hit wins:

    1. the last closed, non-empty ``\\boxed{}``/``\\fbox{}`` anywhere in the text;
    2. after the last ``**Final Answer**`` / ``Final Answer:`` marker: the first math span there
       (``$...$``, ``\\[...\\]``), else the first non-empty line;
    3. the last "the answer is X" / "answer: X" (X runs to the end of the sentence or line; a
       trailing period, ``**`` and surrounding ``$`` are stripped, and a math span inside X wins);
    4. the last number: integers, decimals, negatives, ``1,234``, ``3/4``, ``\\frac{3}{4}``.

    A trailing unclosed box (a truncated generation) is ignored: rules 2-4 only look at the text
    before it, so a cut-off ``\\boxed{12`` never yields ``12``. Earlier closed boxes still win.
    """
    if not text or not text.strip():
        return None
    boxes = _boxes(text)
    for _, content in reversed(boxes):
        if content is not None and content.strip():
            return content.strip()
    if boxes and boxes[-1][1] is None:
        text = text[: boxes[-1][0]]

    markers = list(_FINAL_MARKER.finditer(text))
    if markers:
        found = _after_final_marker(text[markers[-1].end() :])
        if found:
            return found

    for m in reversed(list(_ANSWER_IS.finditer(text))):
        raw = m.group(1)
        math = _first_math(raw)
        found = _tidy(math if math is not None else raw)
        if found:
            return found

    return _last_number(text)


# ---------------------------------------------------------------------------------------------------
# Hesitation

_HESITATION = re.compile(
    r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in HESITATION_WORDS) + r"|hmm+)\b",
    re.IGNORECASE,
)


def is_hesitant(text: str) -> bool:
    """True when the text holds a hesitation word (:data:`HESITATION_WORDS`) as a whole word.

    A probe that hesitates ("42. Wait, ...") has not settled, so it never counts as agreement.
    Matching is case-insensitive and on whole words ("butter", "awaited" do not count); drawn-out
    "hmmm" counts like "hmm"."""
    return bool(_HESITATION.search(text or ""))


# ---------------------------------------------------------------------------------------------------
# Canonical forms

_MAX_SYMPY_CHARS = 200  # longer answers are compared as text: simplify() has no timeout here
# Inputs that make sympy compute astronomically large integers (9^{9^9}, 10^{100000}, (10^{10})!)
# would hang, and no timeout works in threads: such answers are compared as text instead.
_BIG_NUMBER = re.compile(r"\d{5,}")
_EXPONENT_TOKEN = re.compile(r"\\[A-Za-z]+|[\w.]+|.")


def _exponent_argument(s: str, caret: int) -> tuple[str, int]:
    """The argument of the ``^`` at index ``caret`` and the index just after it."""
    i = caret + 1
    while i < len(s) and s[i].isspace():
        i += 1
    if i < len(s) and s[i] == "{":
        end = _closing_brace(s, i + 1)
        return (s[i + 1 :], len(s)) if end is None else (s[i + 1 : end], end + 1)
    m = _EXPONENT_TOKEN.match(s, i)
    return (m.group(0), m.end()) if m else ("", i)


def _risky(s: str) -> bool:
    """True when sympy might compute a huge number from this answer (a power tower, a huge
    exponent or factorial, a binomial of big numbers)."""
    if "**" in s:
        return True
    for m in re.finditer(r"\^", s):
        argument, after = _exponent_argument(s, m.start())
        if re.search(r"\^|!|\\binom|\\choose", argument) or _BIG_NUMBER.search(argument):
            return True
        if s[after:].lstrip().startswith("^"):
            return True
    if re.search(r"!|\\binom|\\choose", s) and (re.search(r"\d{4,}|\^|[)}]\s*!", s) or s.count("!") > 1):
        return True
    return False


_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?"
_NUM_RE = re.compile(_NUM)
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC_ARG = r"(?:\{\s*([^{}]*?)\s*\}|(\d))"
_LATEX_FRAC = re.compile(r"([+-]?)\s*\\frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_UNIT_GROUP = re.compile(r"\s*\\(?:text|textbf|textrm|mbox|mathrm)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?")
_WHOLE_TEXT = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"\\?[A-Za-z]+'?(?:_\{?\w+\}?)?\s*=(?!=)\s*(.+)")
_UNIT_WORD = r"[A-Za-z]{2,}\.?(?:\^\{?\d\}?)?"
_TRAILING_UNITS = re.compile(
    r"(" + _NUM + r"|[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?)\s+(" + _UNIT_WORD + r"(?:\s+" + _UNIT_WORD + r")*)"
)
_WORDY = re.compile(r"[A-Za-z][A-Za-z\s'-]*")


def _strip_delimiters(s: str) -> str:
    """Remove what wraps an answer but carries no value: math delimiters, a box, bold, a period."""
    for _ in range(4):
        before = s
        s = _tidy(s)
        m = re.fullmatch(r"\\(?:boxed|fbox)\s*\{(.*)\}", s, flags=re.DOTALL)
        if m and _closing_brace(s, s.index("{") + 1) == len(s) - 1:
            s = m.group(1)
        if s == before:
            break
    return s


def _clean(answer: str) -> str:
    """Strip formatting, units and ``x =`` so that only the value is left (before any parsing)."""
    s = _strip_delimiters(answer)
    s = s.replace("\\$", "").replace("$", "")
    # Digit-group separators: 1{,}000, 1\,000, 1\!000, 10,\!080 (a comma then a negative thin space) -> 1,000.
    s = re.sub(r"(?<=\d)(?:(?:\{,\}|,)?\\[,!; ]|\{,\})(?=\d{3}(?!\d))", ",", s)
    s = re.sub(r"\\left\b|\\right\b", "", s)
    s = re.sub(r"(?<!\\)\\[,;:! ]", " ", s)  # thin spaces; a double backslash (matrix row break) stays
    s = re.sub(r"(?<![\\A-Za-z])pi(?![A-Za-z])", r"\\pi", s)  # "3 pi" is 3*pi, not 3*p*i
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)  # degrees
    s = re.sub(r"\s*\\?%\s*$", "", s)  # percent: "50%" means the number 50
    whole = _WHOLE_TEXT.fullmatch(s.strip())
    if whole:
        s = whole.group(1)
    elif _UNIT_GROUP.search(s) and _UNIT_GROUP.sub("", s).strip():
        s = _UNIT_GROUP.sub("", s)
    s = s.strip()
    m = _ASSIGNMENT.fullmatch(s)
    if m and "=" not in m.group(1):
        s = m.group(1).strip()
    m = _TRAILING_UNITS.fullmatch(s)
    if m:
        s = m.group(1)
    s = s.strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", s)


def _plain_fraction(s: str) -> Fraction | None:
    """An exact value for a plain number: ``42``, ``-3.50``, ``1,234``, ``3/4``, ``1e3``."""
    s = s.strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    try:
        if _NUM_RE.fullmatch(s):
            return Fraction(s)
        num, sep, den = s.partition("/")
        if sep and _NUM_RE.fullmatch(num.strip()) and _NUM_RE.fullmatch(den.strip()):
            return Fraction(num.strip()) / Fraction(den.strip())
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _exact_number(s: str) -> Fraction | None:
    """An exact rational for a number written plainly or as ``\\frac{a}{b}`` (``\\frac12``)."""
    s = re.sub(r"^([+-])\s+", r"\1", s.strip())
    s = re.sub(r"\s*/\s*", "/", s)
    value = _plain_fraction(s)
    if value is not None:
        return value
    m = _LATEX_FRAC.fullmatch(s)
    if m:
        sign, num_b, num_d, den_b, den_d = m.groups()
        num = _plain_fraction(num_b if num_b is not None else num_d)
        den = _plain_fraction(den_b if den_b is not None else den_d)
        if num is None or den is None or den == 0:
            return None
        value = num / den
        return -value if sign == "-" else value
    return None


_Kind = Literal["number", "symbolic", "text"]


@dataclass(frozen=True)
class _Canon:
    key: str
    kind: _Kind
    cleaned: str


class _DropTimeoutDisabledWarning(logging.Filter):
    """Drop math_verify's "Timeout is disabled" warning: disabling it is deliberate here (see _parse)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


@lru_cache(maxsize=1)
def _math_verify():
    """math_verify, imported on first use: it pulls in sympy and antlr (a few hundred ms)."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
    return math_verify


@lru_cache(maxsize=8192)
def _parse(cleaned: str) -> tuple:
    """math_verify's parse of one cleaned answer, wrapped in ``$`` so it is read as LaTeX.

    The timeout is disabled: math_verify's timeout uses signal.alarm, which raises outside the main
    thread. _sympy_safe keeps the inputs that could hang away from here."""
    mv = _math_verify()
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    try:
        return tuple(mv.parse(f"${cleaned}$", extraction_config=config, parsing_timeout=None))
    except Exception:  # noqa: BLE001 - unparsable answers are compared as text
        return ()


def _sympy_safe(cleaned: str) -> bool:
    return len(cleaned) <= _MAX_SYMPY_CHARS and not _risky(cleaned)


def _symbolic_key(cleaned: str) -> str | None:
    """``str(simplify(expr))`` for an answer sympy understands, else None."""
    import sympy

    parsed = [p for p in _parse(cleaned) if isinstance(p, (sympy.Basic, sympy.MatrixBase))]
    if not parsed:
        return None
    try:
        expr = sympy.simplify(parsed[0])
        if isinstance(expr, sympy.Float):
            expr = sympy.nsimplify(expr, rational=True)
        if expr.has(sympy.zoo, sympy.nan):
            return None  # 1/0 and 2/0 are not the same answer
        return re.sub(r"\s+", " ", str(expr)).strip()
    except Exception:  # noqa: BLE001 - sympy cannot simplify it: compare as text
        return None


@lru_cache(maxsize=8192)
def _canon(answer: str) -> _Canon | None:
    cleaned = _clean(answer)
    if not cleaned:
        return None
    value = _exact_number(cleaned)
    if value is not None:
        return _Canon(str(value), "number", cleaned)
    text = re.sub(r"\s+", " ", cleaned).strip().lower()
    # Words ("yes", "no", "Monday") and choice letters ("(A)") are text: sympy would read "yes" as
    # the product e*s*y and equate it with "sey". The price: a bare product of letters ("xy") is
    # text too, so "xy" and "yx" differ.
    choice = re.fullmatch(r"\(?([a-z])\)?", text)
    if choice:
        return _Canon(choice.group(1), "text", cleaned)
    if _WORDY.fullmatch(cleaned) and re.search(r"[A-Za-z]{2,}", cleaned):
        return _Canon(text, "text", cleaned)
    if _sympy_safe(cleaned):
        key = _symbolic_key(cleaned)
        if key is not None:
            return _Canon(key, "symbolic", cleaned)
    return _Canon(text, "text", cleaned)


def canonical_answer(answer: str | None) -> str | None:
    """A normalised key for grouping answers by hashing; None for a missing or empty answer.

    Formatting is stripped first (``$``, ``\\boxed``, ``\\text{}`` units and trailing unit words,
    ``x =``, ``%``, degrees, thousands separators). Then numbers become exact rationals printed like
    sympy does (``\\frac{1}{2}``, ``1/2``, ``0.5``, ``\\dfrac12`` -> ``"1/2"``; ``3.0`` -> ``"3"``);
    other mathematics becomes ``str(sympy.simplify(expr))`` (``\\sqrt{4}`` -> ``"2"``); words and
    anything sympy cannot read become a lowercase, whitespace-normalised string.

    Equal keys imply :func:`answers_equal`; the converse does not hold (``1.414214`` and
    ``\\sqrt{2}`` are equal within math_verify's 6-decimal rounding but have different keys).
    Decimals are exact: ``0.33`` is 33/100, never 1/3. The first call for a new symbolic answer
    costs sympy parsing and simplification (milliseconds); results are cached per string."""
    if answer is None:
        return None
    canon = _canon(answer)
    return None if canon is None else canon.key


@lru_cache(maxsize=65536)
def _equal_canons(a: _Canon, b: _Canon) -> bool:
    if a.key == b.key:
        return True
    if a.kind == "number" and b.kind == "number":
        return False  # both exact rationals, and they differ
    if "text" in (a.kind, b.kind) or not (_sympy_safe(a.cleaned) and _sympy_safe(b.cleaned)):
        return False
    pa, pb = _parse(a.cleaned), _parse(b.cleaned)
    if not pa or not pb:
        return False
    try:
        return bool(_math_verify().verify(list(pa), list(pb), timeout_seconds=None))
    except Exception:  # noqa: BLE001 - an incomparable pair is not equal
        return False


def answers_equal(a: str | None, b: str | None) -> bool:
    """True when two answers denote the same value (``x=3`` and ``3``; ``\\sqrt{4}`` and ``2``).

    None equals nothing, not even None: a missing answer is no evidence of agreement. Equal
    :func:`canonical_answer` keys are the fast path; two plain numbers are otherwise compared exactly
    (so ``0.33`` is not ``1/3``); anything symbolic goes to math_verify's ``verify``, which compares
    numerically to 6 decimals and symbolically. Words are compared as lowercase strings. The pair is
    put in a fixed order before ``verify``, so the result is symmetric.

    Cost: a dict lookup for answers seen before; on first sight, microseconds for numbers and a few
    to tens of milliseconds for symbolic answers (sympy). Safe in worker threads."""
    if a is None or b is None:
        return False
    ca, cb = _canon(a), _canon(b)
    if ca is None or cb is None:
        return False
    if (ca.key, ca.kind, ca.cleaned) > (cb.key, cb.kind, cb.cleaned):
        ca, cb = cb, ca
    return _equal_canons(ca, cb)
