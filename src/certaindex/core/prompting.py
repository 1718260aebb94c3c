"""The probe protocol and prompt building every layer shares: think tags, the probe suffix and
where a probe's answer ends, reading a probe's answer, and checking a question. Pure text: it
imports nothing of the package above ``core``."""

from __future__ import annotations

from certaindex.core.answers import extract_answer, extract_boxed

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_PROBE_SUFFIX = "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Where a probe's boxed answer ends: stopping there saves the tokens the model would write after it.
PROBE_STOPS = ("}\\]", "} \\]", "}$", "}\n")
# Points in the reasoning where the model concludes or turns around: a probe there is most informative.
PROBE_EVENT_MARKERS = ("Wait", "wait,", "So the answer", "the answer is", "Therefore", "Final Answer", "\\boxed", THINK_CLOSE)

class NoQuestionError(ValueError):
    """The question is empty or not text a model can reason about."""


def validate_question(question: str, max_chars: int = 100_000) -> str:
    if not isinstance(question, str) or not question.strip():
        raise NoQuestionError("the question is empty")
    if len(question) > max_chars:
        raise NoQuestionError(f"the question is {len(question)} characters long; the limit is {max_chars}")
    if not any(ch.isalnum() for ch in question):
        raise NoQuestionError("the question has no letters or digits")
    return question.strip()


def build_prompt_messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return messages


def opens_box(probe_suffix: str) -> bool:
    return probe_suffix.rstrip().endswith("\\boxed{")


def read_probe_answer(probe_suffix: str, probe_text: str, hit_stop: bool = False) -> str | None:
    """Read a probe's answer. The default suffix opens ``\\boxed{``, so the answer is what the model
    writes before closing it; an unclosed box (the probe ran out of tokens) gives no answer.
    ``hit_stop``: the completion ended on one of :data:`PROBE_STOPS`, which closed the box."""
    if opens_box(probe_suffix):
        return extract_boxed("\\boxed{" + probe_text + ("}" if hit_stop else ""))
    return extract_answer(probe_text)


def marks_probe_event(before: str, added: str) -> bool:
    """Whether ``added`` (text just streamed after ``before``) completes one of
    :data:`PROBE_EVENT_MARKERS`: a conclusion, a "Wait" or ``</think>``."""
    if not added:
        return False
    longest = max(len(m) for m in PROBE_EVENT_MARKERS)
    window = before[-(longest - 1):] + added if longest > 1 else added
    start = len(window) - len(added)  # a marker must end inside the added text
    for marker in PROBE_EVENT_MARKERS:
        at = window.find(marker, max(0, start - len(marker) + 1))
        if at != -1 and at + len(marker) > start:
            return True
    return False


def format_answer(answer: str | None) -> str:
    return f"**Final Answer**\n\n\\[ \\boxed{{{answer}}} \\]" if answer is not None else ""
