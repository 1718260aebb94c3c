"""Where the tokens of a streamed piece end, when the engine sent several tokens as one piece.

Why: the certainty score places text markers ("Wait", ``\\boxed{}``, ``</think>``) and DEER trial
points by token count, and the profiles were fitted on the model's own tokenization. A stream that
delivers several tokens per piece (vLLM's stream interval, a busy server's batched flush, a reader
catching up) gives the piece's text and token count but not where each token ends. Spreading the
characters evenly puts a "Wait" a token before or after its trial point at random, which flips
whether the trial counts its own "Wait" (the score's wait features) and moved R1-7B exits by hundreds
of tokens against ``evaluate`` (benchmarks/results/token-placement/README.md).

Byte-level BPE tokenizers (Qwen2/Qwen3, Llama 3, GPT) never merge across the pieces of their
pre-tokenizer: every pre-token end is a token end. So the piece is cut at the pre-token ends of the
Qwen2 pattern (a word with the one non-letter before it, single digits, punctuation runs, newline
runs, spaces); exact wherever each pre-token is one token, which holds for almost all of English
reasoning text. Where the count disagrees, the extra tokens split the longest pre-tokens evenly
(more tokens than pre-tokens), or the token ends are picked evenly among the pre-token ends (fewer).
"""

from __future__ import annotations

import heapq
import re

__all__ = ["PRETOKEN_RE", "piece_token_ends"]

# The Qwen2 / Qwen3 pre-tokenizer (Llama 3's differs in grouping up to three digits), written for
# ``re``: ``[^\W\d_]`` is a letter (\p{L}), ``\d`` a digit (\p{N}); the reasoning tags are tokens of their own.
PRETOKEN_RE = re.compile(
    r"</?think>"  # added tokens: whole, before the pattern splits the rest
    r"|'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"
    r"|\d"
    r"| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def _even(length: int, tokens: int) -> list[int]:
    return [round(length * i / tokens) for i in range(1, tokens + 1)]


def piece_token_ends(piece: str, tokens: int) -> list[int]:
    """The character offset (within ``piece``) just after each of its ``tokens`` tokens: non-decreasing,
    the last one ``len(piece)``; empty for ``tokens`` <= 0. One token: the piece's end (exact)."""
    if tokens <= 0:
        return []
    if tokens == 1 or not piece:
        return [len(piece)] * tokens
    bounds: list[int] = []
    for m in PRETOKEN_RE.finditer(piece):
        if m.end() > (bounds[-1] if bounds else 0):
            bounds.append(m.end())
    if not bounds or bounds[-1] != len(piece):  # the pattern covers every character; a guard all the same
        return _even(len(piece), tokens)
    if len(bounds) >= tokens:  # fewer tokens than pre-tokens: token ends picked evenly among the pre-token ends
        p = len(bounds)
        return [bounds[round(p * i / tokens) - 1] for i in range(1, tokens + 1)]
    return _split_longest(bounds, tokens)


def _split_longest(bounds: list[int], tokens: int) -> list[int]:
    """``tokens`` ends: every pre-token end, the extra ones splitting the pre-tokens with the most
    characters per token evenly."""
    starts = [0] + bounds[:-1]
    cuts = [1] * len(bounds)
    heap = [(-(b - s), j) for j, (s, b) in enumerate(zip(starts, bounds))]
    heapq.heapify(heap)
    for _ in range(tokens - len(bounds)):
        _, j = heapq.heappop(heap)
        cuts[j] += 1
        heapq.heappush(heap, (-(bounds[j] - starts[j]) / cuts[j], j))
    ends: list[int] = []
    for s, b, c in zip(starts, bounds, cuts):
        ends += [s + round((b - s) * i / c) for i in range(1, c + 1)]
    return ends
