"""Where does a live program place tokens it received several to a piece? (why 4 R1-7B exits moved)

The live score (:class:`certaindex.core.exit_score.LiveScore`) places its text markers ("Wait",
boxes, ``</think>``) and DEER trial points by token count. A stream that delivers ``k`` tokens a
piece (replay-server ``--flush-ms``, vLLM's stream interval) gives each piece's text and token count
only. Each recorded trajectory's reasoning (Governor dev traces, its model's own tokenization by
``quicktok-v1``, :func:`certaindex.traces.tokenmap.encode`) is cut into ``k``-token pieces and the
token ends are placed two ways:

* ``even``: the piece's characters spread evenly over its tokens (the live score before);
* ``pretok``: :func:`certaindex.core.token_ends.piece_token_ends` (the pre-tokenizer's ends).

Counted against the true ends: token ends placed exactly; trial points (the text before each
"Wait"/"wait", ``TRIAL_RE``) at the exact token count; trials that count their own "Wait" as the
model's tokens say (what ``evaluate``'s replay reads: the R1 profile's wait features); reflection-word
markers (``WAIT_RE``) at the exact token count.

    python benchmarks/token_placement.py --out benchmarks/results/token-placement/summary.txt
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.core.exit_score import TRIAL_RE, WAIT_RE  # noqa: E402
from certaindex.core.token_ends import piece_token_ends  # noqa: E402
from certaindex.traces.governor import Trajectory, read_governor  # noqa: E402
from certaindex.traces.tokenmap import encode  # noqa: E402

SHARED = ROOT.parent / "shared" / "traces" / "governor"


def even(piece: str, n: int) -> list[int]:
    """The live score's placement before: characters spread evenly over the piece's tokens."""
    return [round(len(piece) * i / n) for i in range(1, n + 1)]


METHODS: dict[str, Callable[[str, int], list[int]]] = {"even": even, "pretok": piece_token_ends}


def placed(text: str, true_ends: list[int], k: int, method: Callable[[str, int], list[int]]) -> list[int]:
    """Token ends as a live program places them when the stream carries ``k`` tokens a piece."""
    ends: list[int] = []
    lo = 0
    for i in range(0, len(true_ends), k):
        hi = true_ends[min(i + k, len(true_ends)) - 1]
        ends += [lo + e for e in method(text[lo:hi], min(k, len(true_ends) - i))]
        lo = hi
    return ends


def tokens_at(ends: list[int], char: int) -> int:
    """Tokens needed to have written ``text[:char]`` (``core.exit_score._tokens_at``)."""
    return bisect.bisect_left(ends, char) + 1


def count(trajs: list[Trajectory], ks: list[int]) -> collections.Counter:
    stats: collections.Counter = collections.Counter()
    for t in trajs:
        coded = encode(t.full_text, t.model_name)
        if coded is None:
            stats["not encodable"] += 1
            continue
        true_ends = [int(e) for e in coded[1]]
        trials = [(m.start(), m.end()) for m in TRIAL_RE.finditer(t.full_text)]
        waits = [m.end() for m in WAIT_RE.finditer(t.full_text)]
        for k in ks:
            for name, method in METHODS.items():
                ends = placed(t.full_text, true_ends, k, method)
                s = (k, name)
                stats[s + ("ends",)] += sum(a == b for a, b in zip(ends, true_ends))
                stats[s + ("trial_pos",)] += sum(tokens_at(ends, a) == tokens_at(true_ends, a) for a, _ in trials)
                stats[s + ("own_wait",)] += sum(
                    (tokens_at(ends, b) <= tokens_at(ends, a)) == (tokens_at(true_ends, b) <= tokens_at(true_ends, a))
                    for a, b in trials)
                stats[s + ("waits",)] += sum(tokens_at(ends, c) == tokens_at(true_ends, c) for c in waits)
        stats["tokens"] += len(true_ends)
        stats["trials"] += len(trials)
        stats["reflection words"] += len(waits)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=SHARED)
    parser.add_argument("--families", nargs="+", default=["r1-distill-qwen-7b", "qwen3-8b", "r1-distill-llama-8b"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--limit", type=int, default=10, help="first N dev MATH500 problems of each seed")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 64], help="tokens a streamed piece carries")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [f"$ python benchmarks/token_placement.py {shlex.join(sys.argv[1:])}",
             f"machine: {platform.node()} ({os.cpu_count()} CPUs, shared); dev split, math500, seeds {args.seeds}, "
             f"first {args.limit} problems of each", "",
             f"{'family':<22} {'k':>3} {'method':<7} {'ends':>7} {'trial pos':>9} {'own wait':>9} {'waits':>7}"]
    for family in args.families:
        trajs = [t for seed in args.seeds
                 for run in read_governor(args.traces / f"{family}__math500__seed_{seed}", "dev")
                 for t in run.trajectories[:args.limit]]
        st = count(trajs, args.k)
        for k in args.k:
            for name in METHODS:
                def share(what: str, of: str) -> str:
                    return f"{st[(k, name, what)] / max(st[of], 1):.4f}"
                lines.append(f"{family:<22} {k:>3} {name:<7} {share('ends', 'tokens'):>7} "
                             f"{share('trial_pos', 'trials'):>9} {share('own_wait', 'trials'):>9} "
                             f"{share('waits', 'reflection words'):>7}")
        lines.append(f"  ({len(trajs)} trajectories, {st['tokens']} tokens, {st['trials']} trial points, "
                     f"{st['reflection words']} reflection words, {st['not encodable']} not encodable)")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
