"""Token ends inside a several-token streamed piece (core.token_ends) and the live score that uses them."""

from __future__ import annotations

import itertools

from certaindex.core.exit_score import LiveScore
from certaindex.core.token_ends import piece_token_ends

# A reasoning text as a Qwen2-style byte-level BPE cuts it: a word carries the space before it, a
# digit and a newline run stand alone, "Wait" after a blank line is a token of its own.
TOKENS = ["Let", " me", " compute", " ", "2", "+", "2", ".\n\n", "Wait", ",", " that", " is", " ", "4", ".",
          " So", " the", " answer", " is", " $\\", "boxed", "{", "4", "}$.", " Wait", ",", " yes", ".\n\n",
          "Hmm", ",", " wait", " again", "."]
TEXT = "".join(TOKENS)
TRUE_ENDS = list(itertools.accumulate(len(t) for t in TOKENS))

RULE = {"schedule": "bx+tr", "threshold": None, "trials": {"max": 30},
        "model": {"features": ["log_waits"], "mean": [0.0], "scale": [1.0], "coef": [1.0], "intercept": 0.0}}


def _pieces(k: int) -> list[tuple[str, int]]:
    return [("".join(TOKENS[i:i + k]), len(TOKENS[i:i + k])) for i in range(0, len(TOKENS), k)]


def test_piece_token_ends_are_the_tokenizers_where_each_pretoken_is_one_token():
    for k in (1, 2, 3, 5, 8, len(TOKENS)):
        ends, start = [], 0
        for piece, n in _pieces(k):
            ends += [start + e for e in piece_token_ends(piece, n)]
            start += len(piece)
        assert ends == TRUE_ENDS, k


def test_piece_token_ends_keep_the_count_and_order_where_the_count_disagrees():
    assert piece_token_ends("anything", 0) == []
    assert piece_token_ends("", 3) == [0, 0, 0]  # a usage correction: tokens without text
    assert piece_token_ends(" reconsidering", 1) == [14]
    more = piece_token_ends(" reconsidering it", 4)  # a word the model cut in three: extra ends inside it
    assert len(more) == 4 and more == sorted(more) and more[-1] == 17 and 14 in more
    fewer = piece_token_ends("a, b, c, d", 2)  # fewer tokens than pre-tokens: ends picked among theirs
    assert len(fewer) == 2 and fewer[-1] == 10 and fewer[0] in (1, 2, 4, 5, 7, 8)


def _live(k: int) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    live = LiveScore(RULE, lambda a: a)
    points = []
    for piece, n in _pieces(k):
        live.add_text(piece, n)
        points += live.trial_points()
    points += live.trial_points(final=True)
    marks = live.markers()
    return points, marks.waits.tolist(), marks.box_pos.tolist()


def test_live_trial_points_and_markers_do_not_depend_on_how_many_tokens_a_piece_carries():
    """A stream delivering several tokens per piece (vLLM's stream interval, a batched flush) places
    the trial points and the "Wait" / box markers where one-token pieces place them, so the trial
    counts its own "Wait" exactly when the model's tokens say so (after a space: the same token;
    after a blank line: the next one) and the score reads what evaluate's replay reads. Spreading a
    piece's characters evenly over its tokens moved them by a token and the R1 profile's exits by
    hundreds of tokens (math500/3/seed_44: 1024 live against 759 offline)."""
    one = _live(1)
    points, waits, boxes = one
    assert [c for c, _ in points] == [TEXT.index("Wait"), TEXT.index(" Wait") + 1, TEXT.index(" wait") + 1]
    # a trial after a blank line does not count its "Wait"; one after a space does
    assert [pos in waits for _, pos in points] == [False, True, True]
    for k in (2, 3, 4, 6, 8, 16):
        assert _live(k) == one, k
