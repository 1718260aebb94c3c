"""The certainty score: live features of one chain of thought and a fitted logistic model over them.

Why: "the last k probes agree" keeps accuracy on real reasoning models only at k so large that
little is saved. The score combines what a streaming program already sees at each decision point:

* the answers observed so far (probes, DEER-style trials read at "Wait" points with their token
  probabilities, and every ``\\boxed{}`` the model writes itself, which costs nothing);
* the reasoning text so far, summarised by :class:`TextMarkers` (reflection words, final-answer
  phrases, ``</think>``, boxed contents), each placed by the token count at which it is complete.

Everything here is pure: agreement between answers goes through an injected ``key`` function
(the project's :func:`~certaindex.core.answers.canonical_answer`, or a cache of it); positions in
the text come from an injected array of character ends per token. Offline replay
(:mod:`certaindex.evaluation.score_policy`) and the live program share :func:`stream_features`.

The model (:class:`ScoreModel`) is a standardised L2 logistic regression whose parameters
serialise to JSON inside a profile; :func:`fit_logistic` fits it with Newton steps (numpy only).
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np

from certaindex.core.answers import _boxes, _closing_brace
from certaindex.core.token_ends import piece_token_ends

__all__ = [
    "FEATURES",
    "FINAL_RE",
    "LiveScore",
    "CONFIDENCE_RULES",
    "NEVER",
    "Obs",
    "RELATIVE_FEATURES",
    "ScoreModel",
    "TextMarkers",
    "THINK_CLOSE",
    "TRIAL_RE",
    "TrialReading",
    "WAIT_RE",
    "answer_parts",
    "fit_logistic",
    "first_exit",
    "stream_features",
    "text_markers",
    "trial_confidence",
    "read_trial",
    "tokens_to_stop",
]

KeyFn = Callable[[Optional[str]], Optional[Hashable]]
NEVER = 10**9  # token count of a marker that has not been written

WAIT_RE = re.compile(
    r"\b(?:Wait|wait|Hmm|hmm|Alternatively|Hold on|But wait|"
    r"Let me (?:double[- ]check|verify|check|re-?examine|recheck|re-?evaluate|confirm))\b"
)
# Where DEER-style trials are taken: before each "Wait"/"wait" (the Governor DEER records' trigger
# points: the first 30 matches of this pattern, the trial prompt being the text before the match).
TRIAL_RE = re.compile(r"\b[Ww]ait\b")
FINAL_RE = re.compile(r"\*\*\s*Final Answer|[Tt]he (?:final )?answer is|[Ff]inal answer:")
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class TrialReading:
    """What a trial answer says: the answer in the box, its confidence and its smallest token probability."""

    answer: str | None
    confidence: float
    min_prob: float
    answer_tokens: int  # the tokens the confidence is read over


#: Trial confidence rules of the Governor DEER records (their ``policy``): ``avg1`` (R1-Distill-Qwen-7B),
#: the mean token probability after the opening brace up to the box's closing one; ``avg2`` (Qwen3-8B,
#: recorded with ``require_think_close``), the geometric mean of the token probabilities after the
#: opening brace up to and including the token that writes ``</think>``.
CONFIDENCE_RULES = ("avg1", "avg2")


def trial_confidence(logprobs: Sequence[float], rule: str = "avg1") -> tuple[float, float]:
    """(confidence, min_prob) of a trial answer from the logprobs of its tokens.

    ``avg1`` (DEER's): the mean probability of the tokens after the first, which is the box's
    opening brace. ``avg2``: the exponential of their mean logprob (the geometric mean probability).
    Each reproduces the ``confidence`` of the Governor ``deer.jsonl.gz`` records of its ``policy``
    from their ``logprobs`` (``benchmarks/trial_confidence.py``). ``min_prob`` is the smallest
    probability of any of the tokens (the opening one included). No tokens: (0.0, 0.0)."""
    if rule not in CONFIDENCE_RULES:
        raise ValueError(f"trial confidence rule must be one of {', '.join(CONFIDENCE_RULES)}, got {rule!r}")
    lps = [float(lp) for lp in logprobs]
    if not lps:
        return 0.0, 0.0
    rest = lps[1:] or lps
    if rule == "avg2":
        conf = math.exp(sum(rest) / len(rest))
    else:
        conf = sum(math.exp(lp) for lp in rest) / len(rest)
    return conf, min(math.exp(lp) for lp in lps)


def read_trial(tokens: Sequence[str], logprobs: Sequence[float], rule: str = "avg1",
               require_think_close: bool = False) -> TrialReading:
    """Read a trial's completion of ``...\\boxed`` from its tokens and their logprobs.

    The answer is the content of the box the first token opens (None when that box never closes).
    Without ``require_think_close`` the confidence is :func:`trial_confidence` over all the tokens
    (the trial's stop strings end it; one that writes ``}, \\boxed{...`` runs on, and the records
    score those tokens too). With it (the Qwen3 records' rule: the trial runs on until ``</think>``)
    it is over the tokens up to and including the first one that writes ``</think>``, and 0.0 when
    none does (``min_prob`` then over all the tokens, as the records' is)."""
    text = "".join(tokens)
    ends = np.cumsum([len(t) for t in tokens]) if tokens else np.zeros(0, dtype=np.int64)
    opening = re.search(r"(?<!\\)\{", text)  # the first brace that is not escaped
    close = _closing_brace(text, opening.end()) if opening else None
    answer = None
    boxes = _boxes("\\boxed" + text) if close is not None else []
    if boxes and boxes[0][1] is not None and boxes[0][1].strip():
        answer = boxes[0][1]
    if require_think_close:
        think = text.find(THINK_CLOSE)
        n = len(tokens) if think < 0 else int(np.searchsorted(ends, think + len(THINK_CLOSE), side="left")) + 1
        conf, minp = trial_confidence(list(logprobs)[:n], rule)
        return TrialReading(answer, conf if think >= 0 else 0.0, minp, n)
    conf, minp = trial_confidence(list(logprobs), rule)
    return TrialReading(answer, conf, minp, len(tokens))


def tokens_to_stop(tokens: Sequence[str], stops: Sequence[str]) -> int:
    """How many of ``tokens`` an engine stopping at ``stops`` generates: up to and including the
    token that completes the first stop string; all of them when none does.

    Why: a trial recorded under a longer rule (Qwen3-8B's run on until ``</think>``) holds, as its
    prefix, the tokens a trial stopping at the box's end would have produced; reading that prefix
    is reading the trial as a live profile with DEER's stops reads it."""
    longest = max((len(s) for s in stops), default=0)
    text = ""
    for i, tok in enumerate(tokens):
        start = max(0, len(text) - longest + 1)
        text += tok
        if any(s and s in text[start:] for s in stops):
            return i + 1
    return len(tokens)


@dataclass(frozen=True)
class Obs:
    """One observation of the current answer, in the order a live program receives them.

    ``src`` is ``box`` (a ``\\boxed{}`` in the model's own text: free), ``grid`` (a probe),
    ``event`` (a probe at an event) or ``trial`` (a DEER-style trial read at a "Wait")."""

    pos: int  # reasoning tokens generated when it was observed
    src: str
    answer: str | None
    certain: bool = True  # False when the probe text hesitates
    out_tokens: int = 0  # tokens spent to read it (0 for boxes)
    confidence: float = 0.0  # trials: the answer's confidence from its token logprobs
    min_prob: float = 0.0  # trials: the smallest token probability of the answer


@dataclass
class TextMarkers:
    """Where markers of the reasoning text are complete, as token counts (sorted int arrays)."""

    waits: np.ndarray
    finals: np.ndarray
    think_close: int  # token count at which ``</think>`` is complete; NEVER if not written
    box_pos: np.ndarray
    box_content: list[str] = field(default_factory=list)


def _tokens_at(ends: np.ndarray, chars: Sequence[int]) -> np.ndarray:
    """Token counts needed to have written ``text[:c]`` for each char offset ``c``."""
    if not len(chars):
        return np.zeros(0, dtype=np.int64)
    return np.searchsorted(ends, np.asarray(chars), side="left").astype(np.int64) + 1


def text_markers(text: str, ends: Sequence[int] | np.ndarray) -> TextMarkers:
    """Reflection words, final-answer phrases, ``</think>`` and ``\\boxed{}`` of ``text``, placed by
    token count. ``ends[i]`` is the character offset just after token ``i`` (non-decreasing); a live
    program builds it from the chunks it streamed, replay from a tokenizer."""
    ends = np.asarray(ends, dtype=np.int64)
    waits = _tokens_at(ends, [m.end() for m in WAIT_RE.finditer(text)])
    finals = _tokens_at(ends, [m.end() for m in FINAL_RE.finditer(text)])
    i = text.find(THINK_CLOSE)
    think = int(_tokens_at(ends, [i + len(THINK_CLOSE)])[0]) if i >= 0 else NEVER
    box_ends, contents = [], []
    for start, content in _boxes(text):
        if content is None or not content.strip():
            continue  # an unclosed box (not written yet) or an empty one
        j = text.find(content, start)
        box_ends.append((j + len(content) + 1) if j >= 0 else start + 8)
        contents.append(content.strip())
    return TextMarkers(waits, finals, think, _tokens_at(ends, box_ends), contents)


FEATURES: tuple[str, ...] = (
    "log_pos",          # log(pos)
    "run_n",            # log1p(# trailing observations agreeing with the current answer)
    "run_tok",          # tokens since the agreement run started / 1000
    "run_frac",         # run tokens / pos
    "frac_agree",       # share of the answers so far that agree with the current one
    "n_distinct",       # log1p(# distinct answers so far)
    "n_changes",        # log1p(# answer changes so far)
    "cur_certain",      # the current observation does not hesitate
    "run_uncertain",    # log1p(# hesitant observations inside the run)
    "letter_or_empty",  # the current answer is a bare letter A-E or empty (a junk probe)
    "ans_len",          # log1p(len(answer))
    "out_full",         # the probe hit its 32-token cap
    "think_closed",     # </think> written
    "n_boxed",          # log1p(# \boxed{} written so far)
    "box_agree",        # the last \boxed{} written so far equals the current answer
    "final_phrase",     # "the answer is" / "**Final Answer**" written so far
    "log_waits",        # log1p(# reflection words so far)
    "wait_rate",        # reflection words per 1000 tokens
    "waits_in_run",     # log1p(# reflection words since the run started)
    "has_trial",        # a trial has been read
    "is_trial",         # the current observation is a trial
    "is_box",           # the current observation is a \boxed{} the model wrote
    "trial_conf",       # confidence of the latest trial
    "trial_minp",       # smallest token probability of the latest trial
    "trial_agree",      # the latest trial equals the current answer
    "trial_agree_conf", # best confidence of trials equal to the current answer
    "trial_n_agree",    # log1p(# trials equal to the current answer)
    "trial_conf_lg",    # -log10(1 - confidence of the latest trial)
    "trial_agree_lg",   # -log10(1 - best confidence of trials equal to the current answer)
    "pos_over_med",     # pos / 4000
    # Relative to the run's own scale (no absolute token count, so they carry across models of
    # different verbosity; RELATIVE_FEATURES below lists what a profile for unknown models reads):
    "ans_age_frac",     # share of the reasoning so far since the current answer was first observed
    "box_age_frac",     # share since the model first wrote the current answer in a \boxed{} (0: never)
    "think_frac",       # share written after </think> (0 before it)
    "final_frac",       # share since the first final-answer phrase (0 before it)
    "waits_run_share",  # share of the reflection words so far written inside the agreement run
    "fewer_parts",      # the current answer has fewer parts (a list cut short) than an earlier answer
)

# The features that read no absolute token count or count of text markers (log_pos, run_tok,
# pos_over_med, wait_rate, log_waits and waits_in_run grow with a model's verbosity): what the
# ``generic`` profile for models of no known family is fitted on.
RELATIVE_FEATURES: tuple[str, ...] = tuple(
    f for f in FEATURES if f not in ("log_pos", "run_tok", "pos_over_med", "wait_rate", "log_waits", "waits_in_run"))

_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PART_SEP = re.compile(r"\\text\{\s*(?:or|and)\s*\}|\b(?:or|and)\b")


def answer_parts(answer: str | None) -> int:
    """How many parts an answer lists: top-level commas and semicolons (outside brackets and braces,
    thousands separators excepted) and the words "or" / "and" split it, empty parts not counted;
    0 for no answer.

    Why: a probe read while the model has found one of two roots answers the list cut short
    (``2`` where the answer is ``2, -3``); an answer with fewer parts than an earlier one is a sign
    of that (feature ``fewer_parts``)."""
    if answer is None or not answer.strip():
        return 0
    text = _PART_SEP.sub(",", _THOUSANDS.sub("", answer))
    depth, parts, current = 0, 0, ""
    for ch in text + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch in ",;" and depth == 0:
            parts += bool(current.strip())  # an empty part ("1, 2, and 3", a trailing comma) is none
            current = ""
            continue
        current += ch
    return max(parts, 1)


def _count_le(arr: np.ndarray, x: int) -> int:
    return int(np.searchsorted(arr, x, side="right"))


def stream_features(obs: Sequence[Obs], marks: TextMarkers, key: KeyFn) -> np.ndarray:
    """Feature matrix (``len(obs)`` x ``len(FEATURES)``) of every observation point of one stream.

    Row ``i`` reads only ``obs[:i+1]`` and the markers complete by ``obs[i].pos``: what a live
    program knows at that point. Two answers agree when their keys are equal and not None."""
    n = len(obs)
    X = np.zeros((n, len(FEATURES)), dtype=np.float64)
    keys = [key(o.answer) for o in obs]
    box_keys = [key(c) for c in marks.box_content]
    counts: dict[Hashable, int] = {}
    n_changes = 0
    prev: Hashable | None = None
    run_start = 0
    last_trial: Obs | None = None
    last_trial_key: Hashable | None = None
    trial_conf: dict[Hashable, float] = {}
    trial_n: dict[Hashable, int] = {}
    hesitant = np.cumsum([0] + [0 if o.certain else 1 for o in obs])
    first_seen: dict[Hashable, int] = {}
    first_box: dict[Hashable, int] = {}
    for p, bk in zip(marks.box_pos, box_keys):
        if bk is not None and bk not in first_box:
            first_box[bk] = int(p)
    first_final = int(marks.finals[0]) if len(marks.finals) else NEVER
    most_parts = 0  # the most parts of an earlier answer
    for i, o in enumerate(obs):
        k = keys[i]
        if i == 0 or k is None or k != prev:
            run_start = i
            if i > 0:
                n_changes += 1
        prev = k
        if k is not None:
            counts[k] = counts.get(k, 0) + 1
        if o.src == "trial":
            last_trial, last_trial_key = o, k
            if k is not None:
                trial_conf[k] = max(trial_conf.get(k, 0.0), o.confidence)
                trial_n[k] = trial_n.get(k, 0) + 1
        pos = max(o.pos, 1)
        run_n = i - run_start + 1 if k is not None else 0
        run_tok = (o.pos - obs[run_start].pos) if k is not None else 0
        nb = _count_le(marks.box_pos, o.pos)
        nw = _count_le(marks.waits, o.pos)
        nw_run = nw - _count_le(marks.waits, obs[run_start].pos)
        a = o.answer or ""
        agree_conf = trial_conf.get(k, 0.0) if k is not None else 0.0
        if k is not None:
            first_seen.setdefault(k, o.pos)
        box_first = first_box.get(k, NEVER) if k is not None else NEVER
        parts = answer_parts(o.answer)
        X[i] = (
            math.log(pos),
            math.log1p(run_n),
            run_tok / 1000.0,
            run_tok / pos,
            (counts.get(k, 0) / (i + 1)) if k is not None else 0.0,
            math.log1p(len(counts)),
            math.log1p(n_changes),
            float(o.certain),
            math.log1p(hesitant[i + 1] - hesitant[run_start]),
            float(a.strip().strip("()").upper() in ("A", "B", "C", "D", "E", "")),
            math.log1p(len(a)),
            float(o.src in ("grid", "event") and o.out_tokens >= 32),
            float(o.pos >= marks.think_close),
            math.log1p(nb),
            float(nb > 0 and k is not None and box_keys[nb - 1] == k),
            float(_count_le(marks.finals, o.pos) > 0),
            math.log1p(nw),
            1000.0 * nw / pos,
            math.log1p(nw_run),
            float(last_trial is not None),
            float(o.src == "trial"),
            float(o.src == "box"),
            last_trial.confidence if last_trial else 0.0,
            last_trial.min_prob if last_trial else 0.0,
            float(last_trial is not None and k is not None and last_trial_key == k),
            agree_conf,
            math.log1p(trial_n.get(k, 0)) if k is not None else 0.0,
            -math.log10(max(1e-6, 1 - last_trial.confidence)) if last_trial else 0.0,
            -math.log10(max(1e-6, 1 - agree_conf)),
            o.pos / 4000.0,
            (o.pos - first_seen[k]) / pos if k is not None else 0.0,
            (o.pos - box_first) / pos if box_first <= o.pos else 0.0,
            (o.pos - marks.think_close) / pos if marks.think_close <= o.pos else 0.0,
            (o.pos - first_final) / pos if first_final <= o.pos else 0.0,
            nw_run / nw if nw else 0.0,
            float(0 < parts < most_parts),
        )
        most_parts = max(most_parts, parts)
    return X


@dataclass
class ScoreModel:
    """A logistic score over named :data:`FEATURES`: ``P(exiting now is not harmful)``."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown:
            raise ValueError(f"score model uses unknown features: {', '.join(unknown)}")
        if not (len(self.features) == len(self.mean) == len(self.scale) == len(self.coef)):
            raise ValueError("score model: features, mean, scale and coef must have the same length")
        if any(not s > 0 for s in self.scale):
            raise ValueError("score model: every scale must be positive")

    def score(self, X: np.ndarray) -> np.ndarray:
        """The score of each row of a full-:data:`FEATURES` matrix."""
        cols = [FEATURES.index(f) for f in self.features]
        Z = (np.asarray(X, dtype=np.float64)[:, cols] - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(Z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "mean": [float(x) for x in self.mean],
                "scale": [float(x) for x in self.scale], "coef": [float(x) for x in self.coef],
                "intercept": float(self.intercept)}

    @classmethod
    def from_dict(cls, data: Any) -> "ScoreModel":
        if not isinstance(data, dict):
            raise ValueError("score model must be an object with features, mean, scale, coef, intercept")
        try:
            return cls([str(f) for f in data["features"]], [float(x) for x in data["mean"]],
                       [float(x) for x in data["scale"]], [float(x) for x in data["coef"]],
                       float(data["intercept"]))
        except KeyError as exc:
            raise ValueError(f"score model lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"score model has a malformed value ({exc})") from None


def fit_logistic(X: np.ndarray, y: np.ndarray, features: Sequence[str] = FEATURES, l2: float = 2.0,
                 weights: np.ndarray | None = None, iterations: int = 50) -> ScoreModel:
    """Standardise the chosen columns of ``X`` and fit an L2-penalised logistic regression by Newton
    steps. ``l2`` is the penalty ``l2/2 * |coef|^2`` on the standardised coefficients against the
    weighted log-loss (scikit-learn's ``C`` is ``1 / l2``); ``weights`` lets every trajectory count
    once however many rows it has (scaled to sum to the number of rows, as the fits here do)."""
    cols = [FEATURES.index(f) for f in features]
    Z = np.asarray(X, dtype=np.float64)[:, cols]
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    mean = np.average(Z, axis=0, weights=w) if len(y) else np.zeros(len(cols))
    scale = np.sqrt(np.average((Z - mean) ** 2, axis=0, weights=w)) if len(y) else np.ones(len(cols))
    scale[scale < 1e-9] = 1.0
    A = np.hstack([(Z - mean) / scale, np.ones((len(y), 1))])
    beta = np.zeros(A.shape[1])
    penalty = np.full(A.shape[1], l2)
    penalty[-1] = 0.0  # no penalty on the intercept
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(A @ beta)))
        grad = A.T @ (w * (p - y)) + penalty * beta
        hess = (A * (w * p * (1 - p))[:, None]).T @ A + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return ScoreModel(list(features), mean.tolist(), scale.tolist(), beta[:-1].tolist(), float(beta[-1]))


def first_exit(scores: np.ndarray, valid: Sequence[bool], threshold: float) -> int | None:
    """Index of the first observation with an answer whose score reaches ``threshold``; None: never."""
    hit = np.nonzero((np.asarray(scores) >= threshold) & np.asarray(valid, dtype=bool))[0]
    return int(hit[0]) if len(hit) else None


class LiveScore:
    """The score rule of a profile, fed as a program streams (pure: no engine, no I/O).

    A program calls :meth:`add_text` with each streamed piece and its token count, and at each
    decision point (every :attr:`point_every` tokens, and at each DEER trial point) in position
    order: :meth:`boxed` up to the point's position, :meth:`probe_wanted` to know whether the
    schedule reads a probe there, :meth:`observe` with the probe / trial answer it read, then
    :meth:`decide`, which scores the new observations with the same :func:`stream_features` the
    offline replay uses and says whether to exit and with what answer. :meth:`trial_points` gives
    the trial points (before each "Wait") as the text arrives.

    ``rule`` is a profile's ``score`` rule: ``schedule`` (``bx``, ``tc``, ``gN``, ``tr``, ``ev``),
    ``threshold`` (None: never exit), ``model`` and, with ``tr``, ``trials`` (``suffix``, ``max``,
    ``tokens``, ``confidence_rule``, ``require_think_close``: see :func:`read_trial`)."""

    GRID = 64  # the probe grid the schedule's gN and tc are defined on (the Governor traces')

    def __init__(self, rule: dict[str, Any], key: KeyFn) -> None:
        self.parts = rule["schedule"].split("+")
        self.threshold = rule.get("threshold")
        self.model = ScoreModel.from_dict(rule["model"])
        self.every = next((int(p[1:]) for p in self.parts if p.startswith("g")), None)
        trials = rule.get("trials") or {}
        self.reads_trials = "tr" in self.parts
        self.trial_suffix: str = trials.get("suffix", "\n**Final Answer**\n\\boxed")
        self.trial_max = int(trials.get("max", 30))
        self.trial_tokens = int(trials.get("tokens", 20))
        # how the trials the profile was fitted on read their confidence (the records' ``policy``)
        self.trial_rule: str = str(trials.get("confidence_rule", "avg1"))
        self.require_think_close = bool(trials.get("require_think_close", False))
        self.key = key
        self.text = ""
        self.tokens = 0
        self._ends: list[int] = []
        self.obs: list[Obs] = []
        self._boxes_seen = 0
        self._box_scan = 0  # no box opener starts before this character
        self._markers: tuple[tuple[int, int], TextMarkers] | None = None
        self._trial_scan = 0  # characters scanned for trial points
        self.trials_offered = 0
        self._grid_done = 0  # multiples of the grid interval already probed (probe_wanted)
        self._tc_done = False
        self._decided = 0
        self.exit_obs: Obs | None = None  # the observation that decided the exit
        self.last_score: float | None = None  # the score of the latest observation decided on

    def add_text(self, chunk: str, tokens: int) -> None:
        """Append streamed text of ``tokens`` tokens, each placed where the model's tokenizer would
        end it (:func:`~certaindex.core.token_ends.piece_token_ends`: exact for one-token chunks,
        and for most of a several-token chunk)."""
        start = len(self.text)
        self.text += chunk
        n = max(int(tokens), 0)
        self._ends += [start + e for e in piece_token_ends(chunk, n)]
        self.tokens += n

    def sync(self, text: str, tokens: int) -> None:
        """Catch up with a program that knows the whole reasoning so far (``text``, ``tokens`` long)."""
        if len(text) >= len(self.text) and tokens >= self.tokens:
            self.add_text(text[len(self.text):], tokens - self.tokens)

    def markers(self) -> TextMarkers:
        """The text's markers; computed once per text (a decision point asks for them more than once)."""
        if self._markers is None or self._markers[0] != (len(self.text), len(self._ends)):
            self._markers = ((len(self.text), len(self._ends)),
                             text_markers(self.text, np.asarray(self._ends or [0], dtype=np.int64)))
        return self._markers[1]

    def point_every(self, probe_interval: int) -> int:
        """Tokens between decision points for a program whose probe interval is ``probe_interval``:
        the schedule's grid (64) or finer, so boxes, ``tc`` and ``gN`` are read where replay reads them."""
        return max(1, min(int(probe_interval), self.GRID))

    def probe_wanted(self, at_tokens: int) -> bool:
        """Whether the schedule reads a probe at the decision point ``at_tokens`` (points asked in
        order, each once): a grid probe (``gN``: the first point at or past each multiple of N;
        exactly at it where tokens stream one by one) or the one probe at the first point after
        ``</think>`` (``tc``)."""
        # A point past a multiple of N not yet probed takes that grid probe: a stream that delivers
        # several tokens at a time (vLLM's stream interval, a busy server's batched flush) lands its
        # points past the multiples, and an exact-multiple test would skip almost every probe there.
        grid = bool(self.every) and at_tokens > 0 and at_tokens // self.every > self._grid_done
        if grid:
            self._grid_done = at_tokens // self.every
        think = self.text.find(THINK_CLOSE)
        closed = think >= 0 and self._token_at(think + len(THINK_CLOSE)) <= at_tokens
        if closed and not self._tc_done and (grid or "tc" in self.parts):
            self._tc_done = True
            return True
        return grid

    def trial_points(self, final: bool = False) -> list[tuple[int, int]]:
        """New DEER trial points as (character offset, token position) of the text before each
        "Wait" (:data:`TRIAL_RE`), at most ``trials.max`` in all, in order; empty unless the schedule
        reads trials. A word at the very end of the text counts once a character follows it (a
        "Waiting" is no "Wait") or ``final`` (the reasoning ended)."""
        if not self.reads_trials:
            return []
        found: list[tuple[int, int]] = []
        for m in TRIAL_RE.finditer(self.text, self._trial_scan):
            if m.end() >= len(self.text) and not final:
                break
            self._trial_scan = m.end()
            if self.trials_offered >= self.trial_max:
                continue
            self.trials_offered += 1
            found.append((m.start(), self._token_at(m.start()) if m.start() else 0))
        else:  # no word left unconfirmed: the next scan starts where a new "Wait" could (not from the last one)
            self._trial_scan = max(self._trial_scan, len(self.text) - len("Wait"))
        return found

    def _token_at(self, char: int) -> int:
        """``_tokens_at`` for one offset, by bisection on the list: called on every streamed piece, it
        must not copy the whole list into an array (quadratic in the reasoning's length)."""
        return bisect.bisect_left(self._ends or [0], char) + 1

    def trial_pending(self) -> bool:
        """A "Wait" ends right at the end of the text, not yet confirmed as a trial point."""
        if not self.reads_trials:
            return False
        return any(m.end() >= len(self.text) for m in TRIAL_RE.finditer(self.text, self._trial_scan))

    def chars_at(self, tokens: int) -> int:
        """Characters written by the first ``tokens`` tokens."""
        if tokens <= 0 or not self._ends:
            return 0
        return self._ends[min(tokens, len(self._ends)) - 1]

    def trial_due(self) -> bool:
        """A new trial point ("Wait") was confirmed since the last call and the schedule reads trials."""
        return bool(self.trial_points())

    def boxed(self, upto: int | None = None) -> list[Obs]:
        """Observations for the ``\\boxed{}`` answers written since the last call (``bx``), those
        complete by token ``upto`` only when given."""
        if "bx" not in self.parts:
            return []
        if all(self.text.find(opener, self._box_scan) < 0 for opener in ("\\boxed", "\\fbox")):
            # no box in the text yet: nothing to read, and the whole text need not be scanned again
            self._box_scan = max(self._box_scan, len(self.text) - len("\\boxed") + 1)
            return []
        m = self.markers()
        new = []
        for p, c in zip(m.box_pos[self._boxes_seen:], m.box_content[self._boxes_seen:]):
            if upto is not None and p > upto:
                break
            new.append(Obs(int(p), "box", c))
        self._boxes_seen += len(new)
        self.obs.extend(new)
        return new

    def observe(self, src: str, answer: str | None, certain: bool = True, out_tokens: int = 0,
                confidence: float = 0.0, min_prob: float = 0.0, pos: int | None = None) -> None:
        """Record a probe (``grid``/``event``) or ``trial`` answer read at token position ``pos``
        (default: the current token count)."""
        at = self.tokens if pos is None else int(pos)
        self.obs.append(Obs(at, src, answer, certain, out_tokens, confidence, min_prob))

    def decide(self) -> tuple[bool, str | None, float]:
        """(exit now, the answer to submit, the best score) over the observations added since the
        last call, in order: the first whose score reaches the threshold decides, as in replay
        (it is kept as :attr:`exit_obs`)."""
        new = self.obs[self._decided:]
        if not new:
            return False, None, 0.0
        scores = self.model.score(stream_features(self.obs, self.markers(), self.key)[self._decided:])
        self._decided = len(self.obs)
        self.last_score = float(scores[-1])
        if self.threshold is not None:
            i = first_exit(scores, [o.answer is not None for o in new], self.threshold)
            if i is not None:
                self.exit_obs = new[i]
                return True, new[i].answer, float(scores[i])
        return False, None, float(scores.max())
