"""Does a problem ask for several answers (a list)? Read from the problem text alone (pure).

Why: a probe read while the model has found one of two roots answers the list cut short (``2``
where the answer is ``2, -3``), and nothing in the answers seen so far shows it: the fuller answer
has not appeared yet. The question does show it ("Enter all the solutions, separated by commas").

The detector of the partial-answers study (``benchmarks/partial_answers.py --guards``, issue 19
item 6), fixed before any outcome was looked at. No guard on it passed on train, so it is not part
of the package's exit decision; it lives here, beside the study, for the next attempt.
"""

from __future__ import annotations

import re

__all__ = ["asks_for_several"]

# Cues that ask for a list whatever else the sentence says.
_LIST_CUES = re.compile(
    r"separated\s+by\s+(?:a\s+)?commas?"
    r"|comma[-\s]separated"
    r"|separate\s+(?:them|your\s+answers|the\s+(?:answers|solutions|values))\s+(?:with|by)\s+(?:a\s+)?commas?"
    r"|\benter\s+all\b"
    r"|\blist\s+(?:all|them|every|each)\b",
    re.IGNORECASE,
)
# "Find all x ...", "all (the) (real) solutions": a list unless an aggregate of it is asked (below).
_ALL_OF = re.compile(
    r"\b(?:find|determine|compute|what\s+are|give|solve\s+for)\s+all\b"
    r"|\ball\s+(?:of\s+)?(?:the\s+)?(?:[a-z-]+\s+){0,2}?"
    r"(?:solutions|values|roots|zeros|zeroes|numbers|integers|pairs|triples|points|answers)\b",
    re.IGNORECASE,
)
# "the sum of all solutions", "how many ... all", "the largest of all values": one number.
_AGGREGATE = re.compile(
    r"\b(?:sum|sums|product|products|number\s+of|count|mean|average|total|how\s+many|largest|smallest|greatest"
    r"|least|maximum|minimum|median)\b[^.?!]{0,40}$",
    re.IGNORECASE,
)


def asks_for_several(problem: str | None) -> bool:
    """Whether ``problem`` asks for several answers: an explicit list cue ("separated by commas",
    "Enter all", "list all"), or "find all ..." / "all (the) ... solutions|values|roots|..." not
    governed by an aggregate ("the sum of all roots", "how many ... all"). False for no text."""
    if not problem:
        return False
    if _LIST_CUES.search(problem):
        return True
    for m in _ALL_OF.finditer(problem):
        if not _AGGREGATE.search(problem[:m.start()]):
            return True
    return False
