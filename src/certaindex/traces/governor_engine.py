"""Answering completion requests from recorded Governor trajectories: the logic of
``certaindex replay-server`` (the HTTP server and its batching clock live in
:mod:`certaindex.server.replay` and :mod:`certaindex.serving.batch_clock`).

A request's raw prompt is recognised and answered from the trajectory it continues:

* **problem**: the prompt must contain a recorded problem's text (the longest one found in its
  head wins); otherwise :class:`UnknownProblem` (HTTP 404).
* **position**: after the problem comes the chat template's tail, then the reasoning written so
  far. The reasoning must be a prefix of the trajectory's ``full_text`` (which starts with
  ``<think>`` where the template also opens it: the overlap is found, within the template's
  tail; with no template tail recognised, the reasoning must be non-empty); otherwise
  :class:`OffTrajectory` (HTTP 400). A prompt that ends in a known suffix is a probe or a trial
  request at that position (below); any other prompt is a **continuation**: the trajectory's own
  text from there on, token by token in the model's vocabulary (``quicktok-v1``, which reproduces
  ``tokens_used``; without it, characters spread evenly over ``tokens_used``), honouring
  ``max_tokens`` and stop strings as vLLM does (the text stops before the stop string; its tokens
  count). The recorded text's end is the model's end (``stop``); for a trajectory that the
  collection cut at its budget (``finish_reason`` length) it is the engine's limit, as a server's
  context cuts a stream: ``length``, and a continuation from there gets no token. The recording
  holds nothing after it, so the answer asked for after such a text is the one ``evaluate``'s full
  reasoning submits (extracted from the text; else the last probe's).
* **probe** (the prompt ends with a probe suffix, e.g. ``**Final Answer**\\n\\n\\[ \\boxed{``): the
  grid probe (every 64 tokens) recorded nearest **at or before** the reasoning's token count N:
  the grid the simulator's plans read, wherever the stream's
  delivery put N a few tokens past a grid point. Event probes are not used: a live probe landing
  on an event's position by chance would read a probe the plans never see. Its text is the
  answer and the closing ``} \\]``; a probe recorded as hesitating (``is_certain`` False) reads
  ``answer} Wait, ...`` instead, so the live reader sees the same answer *and* the hesitation.
  It costs the probe's recorded output tokens (at most ``max_tokens``). Before the first recorded
  probe nothing was recorded: the reply closes no box (no answer, as a recorded probe that found
  none) and costs the Governor probes' 32-token budget (at most ``max_tokens``), never the answer
  of a later probe.
* **trial** (the prompt ends with DEER's inducer ``\\n**Final Answer**\\n\\boxed``): the recorded
  trial nearest at or before N (by the character where its "Wait" starts, where the records give
  it: ``trigger_char_position``), its recorded tokens with their recorded logprobs
  (``deer.jsonl.gz``), from which DEER's rule (``core.exit_score.trial_confidence``) gives back the
  recorded ``confidence`` and min prob.
* **seeds**: a problem recorded under several seeds is served by the one whose text the reasoning
  continues; a fresh request (no reasoning yet, so every seed fits) with a ``seed`` gets that
  seed's recording (the one recorded under it, else number ``seed % n``: the same seed, the same
  trajectory); a greedy one (``temperature`` 0) without a seed gets the lowest (greedy decoding is
  deterministic); any other takes the next seed in turn (round-robin per problem: each a new
  sample). ``seed_rule="first"`` always takes the lowest seed; ``"request"`` is the default's
  older name. An ambiguous reasoning prefix keeps the seed last handed out for that problem.
* **sampling**: a continuation is the recorded sample (the Governor runs sampled at temperature
  0.6, top_p 0.95) whatever ``temperature`` and ``top_p`` ask: only the choice of recording above
  honours them. Probes and trials were recorded greedy: one asking for ``temperature`` > 0 is
  refused (:class:`ReplayError`), since every sample would come back the same.

Pure logic over in-memory trajectories; no I/O, no clock.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np

from certaindex.core.answers import extract_answer
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX
from certaindex.engines.chat_template import BUILTIN_TEMPLATES, ChatTemplate
from certaindex.traces.governor import Probe, Trajectory, Trial
from certaindex.traces.tokenmap import char_ends, encode

__all__ = [
    "DEER_SUFFIX",
    "GOVERNOR_PROBE_SUFFIX",
    "GovernorReplay",
    "OffTrajectory",
    "Piece",
    "Reply",
    "ReplayError",
    "UnknownProblem",
    "trial_reply",
]

#: DEER's trial inducer at "Wait" points (``deer.jsonl.gz``; evaluation.score_policy.TRIAL_SUFFIX).
DEER_SUFFIX = "\n**Final Answer**\n\\boxed"
#: The suffix the Governor probes were taken with (the shipped profiles' probe suffix).
GOVERNOR_PROBE_SUFFIX = "**Final Answer**\n\n\\[ \\boxed{"
SeedRule = Literal["round-robin", "first", "request"]
Kind = Literal["continuation", "probe", "trial"]
_TEMPLATE_TAIL = 400  # most characters of chat template between the problem and the reasoning


def template_tails() -> tuple[str, ...]:
    """What each builtin chat template writes between the user's message and the reply."""
    tails = []
    for name in BUILTIN_TEMPLATES:
        try:
            rendered = ChatTemplate.named(name).render([{"role": "user", "content": "\x00"}])
        except Exception:  # noqa: BLE001 - a template that cannot render a lone user turn
            continue
        tail = rendered.split("\x00", 1)[-1]
        if tail:
            tails.append(tail)
    return tuple(sorted(set(tails), key=len, reverse=True))
_PROBE_BUDGET = 32  # the Governor probes' output budget (a probe that closed no box spent it all)
_AFTER_END = 64  # characters a program may add after a cut trajectory's end (</think>, blank lines)
_HEAD = 8192  # characters of system prompt and template before the problem, at most


class ReplayError(ValueError):
    """A request the recorded trajectories cannot answer."""


class UnknownProblem(ReplayError):
    """No recorded problem appears in the prompt."""


class OffTrajectory(ReplayError):
    """The prompt's reasoning is not a prefix of any recorded trajectory of its problem."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One generated token: its text (may be empty: a stop string's, or half a character), id and
    logprob where known."""

    text: str
    token_id: int | None = None
    logprob: float | None = None
    token: str | None = None  # the token's own text where a stop string cut what is delivered (logprobs show it)

    @property
    def token_text(self) -> str:
        return self.text if self.token is None else self.token


@dataclass(frozen=True)
class Reply:
    """What the engine generates for one request, before pacing."""

    kind: Kind
    trajectory: str  # model/dataset/seed/problem id
    pieces: tuple[Piece, ...]
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens a prefix cache could hold (problem prompt + reasoning, no suffix)
    position: int  # reasoning tokens before the request
    recorded_position: int | None = None  # the probe's or trial's recorded position

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.pieces)


@dataclass
class _Played:
    """A trajectory prepared for playing: its text cut into the model's tokens."""

    traj: Trajectory
    ids: np.ndarray | None
    ends: np.ndarray  # character offset just after each token
    grid: list[Probe] = field(default_factory=list)  # the 64-token grid's probes by position
    grid_pos: list[int] = field(default_factory=list)
    trial_pos: list[int] = field(default_factory=list)
    trial_char: list[int] | None = None  # where each trial's "Wait" starts in the text, when all are recorded

    @property
    def key(self) -> str:
        t = self.traj
        return f"{t.model}/{t.dataset}/seed_{t.seed}/{t.problem_id}"

    def token_at(self, char: int) -> int:
        """Tokens wholly inside the first ``char`` characters."""
        return int(np.searchsorted(self.ends, char, side="right"))

    def piece(self, i: int, start: int | None = None) -> Piece:
        text = self.traj.full_text
        lo = int(self.ends[i - 1]) if i > 0 else 0
        lo = max(lo, start) if start is not None else lo
        hi = max(lo, int(self.ends[i]))
        return Piece(text[lo:hi], int(self.ids[i]) if self.ids is not None else None)


def _prepare(traj: Trajectory) -> _Played:
    coded = encode(traj.full_text, traj.model_name)
    if coded is not None:
        ids, ends = coded
    else:
        ids, (ends, _) = None, char_ends(traj.full_text, traj.model_name, traj.tokens_used)
    probes = sorted(traj.probes, key=lambda p: p.pos)
    played = _Played(traj, ids, np.asarray(ends, dtype=np.int64), probes, [p.pos for p in probes])
    played.trial_pos = [t.pos for t in traj.trials or []]
    chars = [t.char for t in traj.trials or []]
    if chars and all(c is not None for c in chars) and chars == sorted(chars):  # type: ignore[type-var]
        played.trial_char = chars  # type: ignore[assignment]
    return played


def _at_or_before(positions: Sequence[int], n: int) -> int:
    """Index of the last position <= n (the first when all come after n)."""
    return max(0, bisect.bisect_right(positions, n) - 1)


def _trial_logprobs(trial: Trial) -> tuple[tuple[str, float], ...]:
    """The trial's recorded tokens and logprobs, which reproduce its recorded confidence by DEER's
    rule (:func:`certaindex.core.exit_score.trial_confidence`: the mean probability of the tokens
    after the opening brace; the smallest of all). A trial recorded without them gets an opening
    brace at the recorded min prob and its answer at the recorded confidence."""
    if trial.tokens:
        return trial.tokens
    conf = min(1.0, max(1e-12, trial.confidence))
    low = min(max(trial.min_prob, 1e-12), conf)
    return (("{", math.log(low)), (f"{trial.answer or ''}}}", math.log(conf)))


class GovernorReplay:
    """Answers raw-prompt completion requests from recorded trajectories (one model's)."""

    def __init__(self, trajectories: Sequence[Trajectory], *, probe_suffixes: Sequence[str] = (),
                 seed_rule: SeedRule = "round-robin", tails: Sequence[str] | None = None) -> None:
        """``tails``: what chat templates write between the problem and the reasoning (default: every
        builtin template's); a prompt whose problem is followed by one of them must continue the
        recorded text right there, otherwise the reasoning is found by its overlap with the text."""
        if not trajectories:
            raise ValueError("no trajectories to replay")
        if seed_rule not in ("round-robin", "first", "request"):
            raise ValueError(f"seed_rule must be round-robin, first or request, got {seed_rule!r}")
        models = sorted({t.model_name for t in trajectories})
        if len(models) > 1:
            raise ValueError(f"trajectories of several models ({', '.join(models)}): replay one model at a time")
        self.model_name = models[0]
        self.seed_rule = seed_rule
        self.problems: dict[str, list[Trajectory]] = {}
        for t in sorted(trajectories, key=lambda t: (t.seed, t.dataset, t.problem_id)):
            if not t.problem.strip():
                raise ValueError(f"{t.model}/{t.dataset}/seed_{t.seed}/{t.problem_id} has no problem text to recognise")
            self.problems.setdefault(t.problem.strip(), []).append(t)
        self._by_length = sorted(self.problems, key=len, reverse=True)
        self._recent: OrderedDict[str, None] = OrderedDict()  # problems recognised lately, tried first
        suffixes = list(dict.fromkeys([*probe_suffixes, DEFAULT_PROBE_SUFFIX, GOVERNOR_PROBE_SUFFIX]))
        self.probe_suffixes = sorted(suffixes, key=len, reverse=True)  # the longest that fits wins
        self._played: dict[int, _Played] = {}
        self.tails = tuple(tails) if tails is not None else template_tails()
        self._turn: dict[str, int] = {}
        self._last: dict[str, int] = {}
        self._heads: OrderedDict[str, int] = OrderedDict()  # prompt head -> its token count

    @property
    def trajectories(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def prepare_all(self) -> None:
        """Cut every trajectory into tokens now (about 20 ms each), not on its first request."""
        for group in self.problems.values():
            for t in group:
                self.played(t)

    def played(self, traj: Trajectory) -> _Played:
        key = id(traj)
        if key not in self._played:
            self._played[key] = _prepare(traj)
        return self._played[key]

    # -- recognition ------------------------------------------------------------------------

    def recognise(self, prompt: str) -> tuple[str, int]:
        """(problem text, index just after it in ``prompt``); raises UnknownProblem."""
        head = prompt[: _HEAD + len(self._by_length[0])]
        found: tuple[str, int] | None = None
        for text in [*reversed(self._recent), *self._by_length]:  # a program's requests repeat its problem
            at = head.find(text)
            if at >= 0:
                found = (text, at + len(text))
                break
        if found is None:
            raise UnknownProblem(f"no recorded problem appears in the prompt ({len(self.problems)} problems of "
                                 f"{self.model_name} are loaded); the prompt starts {prompt[:80]!r}")
        self._recent[found[0]] = None
        self._recent.move_to_end(found[0])
        if len(self._recent) > 256:
            self._recent.popitem(last=False)
        return found

    def _head_tokens(self, played: _Played, head: str) -> int:
        if head not in self._heads:
            coded = encode(head, played.traj.model_name)
            self._heads[head] = len(coded[0]) if coded is not None else max(1, round(len(head) / 4))
            if len(self._heads) > 4096:
                self._heads.popitem(last=False)
        return self._heads[head]

    def _template_end(self, tail: str) -> tuple[int, int] | None:
        """Where the chat template's ending lies in ``tail`` (the prompt after the problem): a known
        template tail ``tail`` starts with, else the first one (not mere blank lines) within its
        first 400 characters (an instruction after the problem); None when there is none."""
        known = next((t for t in self.tails if tail.startswith(t)), None)
        if known is not None:
            return 0, len(known)
        found = [(at, at + len(t)) for t in self.tails if t.strip()
                 for at in [tail.find(t, 0, _TEMPLATE_TAIL + len(t))] if at >= 0]
        if not found:
            return None
        start = min(at for at, _ in found)
        return start, max(end for at, end in found if at == start)

    def _locate(self, full_text: str, tail: str) -> int | None:
        """Start of the reasoning in ``tail`` (the prompt after the problem): the first offset from
        which the rest of ``tail`` is a prefix of ``full_text``; None when there is none. The
        reasoning must start within the template's ending (its ``<think>`` may be the text's). Where
        no template ending is recognised it must start within 400 characters and be non-empty: an
        empty rest fits every text, and would replay an off-track prompt from the start."""
        span = self._template_end(tail)
        lo, hi = span if span is not None else (0, min(len(tail) - 1, _TEMPLATE_TAIL))
        for j in range(lo, hi + 1):
            if full_text.startswith(tail[j:]):
                return j
        return None

    def _match(self, problem: str, tail: str, seed: int | None,
               greedy: bool = False) -> tuple[Trajectory, int]:
        """The trajectory the reasoning in ``tail`` continues, and the reasoning's end in its text."""
        candidates = self.problems[problem]
        fits: list[tuple[Trajectory, int]] = []
        for t in candidates:
            j = self._locate(t.full_text, tail)
            if j is None and tail.rstrip() != tail:  # the prompt ends in whitespace the text spells otherwise
                stripped = tail.rstrip()
                j = self._locate(t.full_text, stripped)
                if j is not None:
                    end = len(stripped) - j
                    while end < len(t.full_text) and t.full_text[end].isspace():
                        end += 1
                    fits.append((t, end))
                    continue
            if j is not None:
                fits.append((t, len(tail) - j))
        if not fits:  # past the end of a trajectory the collection cut at its budget (no </think> recorded)?
            for t in candidates:
                if t.finish_reason != "length" or len(tail) > len(t.full_text) + _TEMPLATE_TAIL + _AFTER_END:
                    continue
                j = next((i for i in range(min(len(tail), _TEMPLATE_TAIL) + 1) if tail.startswith(t.full_text, i)), None)
                if j is not None and len(tail) - j - len(t.full_text) <= _AFTER_END:
                    self._last[problem] = t.seed
                    return t, len(tail) - j
            t = candidates[0]
            unknown = "" if self._template_end(tail) is not None else (
                "; no chat template ending was recognised after the problem, so the prompt must carry "
                "the reasoning's start (e.g. <think>)")
            raise OffTrajectory(f"the prompt's reasoning does not continue any recorded trajectory of "
                                f"{t.dataset} problem {t.problem_id} ({len(candidates)} seed(s) loaded){unknown}")
        if len(fits) == 1:
            chosen = fits[0]
        elif len(fits) == len(candidates) and all(end == fits[0][1] for _, end in fits) and self._fresh(fits[0]):
            chosen = fits[self._pick(problem, [t.seed for t, _ in fits], seed, greedy)]
        else:
            last = self._last.get(problem)
            chosen = next((f for f in fits if f[0].seed == last), fits[0])
        self._last[problem] = chosen[0].seed
        return chosen

    def _fresh(self, fit: tuple[Trajectory, int]) -> bool:
        """No reasoning yet beyond what the template itself writes (``<think>``)."""
        return not fit[0].full_text[: fit[1]].replace("<think>", "").strip()

    def _pick(self, problem: str, seeds: list[int], seed: int | None, greedy: bool) -> int:
        """Which of a problem's recordings (``seeds``, ascending) a fresh request gets."""
        if self.seed_rule == "first":
            return 0
        if seed is not None:
            return seeds.index(seed) if seed in seeds else seed % len(seeds)
        if greedy:
            return 0
        turn = self._turn.get(problem, 0)
        self._turn[problem] = turn + 1
        return turn % len(seeds)

    # -- answering --------------------------------------------------------------------------

    def answer(self, prompt: str, *, max_tokens: int, stop: Sequence[str] = (), logprobs: int | None = None,
               seed: int | None = None, temperature: float | None = None) -> Reply:
        """The reply to one completion request; raises :class:`ReplayError` subclasses.
        ``temperature`` None: the request did not say (a probe is then read greedy, as recorded)."""
        if max_tokens < 1:
            raise ReplayError(f"max_tokens must be at least 1, got {max_tokens}")
        problem, end = self.recognise(prompt)
        tail = prompt[end:]
        kind: Kind = "continuation"
        suffix = ""
        if tail.endswith(DEER_SUFFIX):
            kind, suffix = "trial", DEER_SUFFIX
        else:
            suffix = next((s for s in self.probe_suffixes if tail.endswith(s)), "")
            kind = "probe" if suffix else "continuation"
        if kind != "continuation" and temperature is not None and temperature > 0:
            raise ReplayError(f"a {kind} at temperature {temperature:g} cannot be replayed: probes and trials "
                              "were recorded greedy, so every sample would come back the same; send temperature 0")
        reasoning_tail = tail[: len(tail) - len(suffix)]
        traj, char = self._match(problem, reasoning_tail, seed, greedy=temperature == 0)
        played = self.played(traj)
        position = played.token_at(char)
        # Prompt tokens: the problem's prompt up to where the reasoning starts, then the reasoning's
        # tokens (counted in the recorded text; a <think> both write is counted twice: 2 tokens).
        head = prompt[:end] + reasoning_tail[: max(0, len(reasoning_tail) - char)]
        base = self._head_tokens(played, head) + position
        suffix_tokens = self._head_tokens(played, suffix) if suffix else 0
        if kind == "continuation" and char > len(traj.full_text):
            pieces, finish, recorded = self._after_end(played, max_tokens, stop)
        elif kind == "continuation":
            pieces, finish = self._continue(played, char, position, max_tokens, stop)
            recorded = None
        elif kind == "probe":
            pieces, finish, recorded = self._probe(played, position, max_tokens, stop)
        else:
            pieces, finish, recorded = self._trial(played, position, char, max_tokens, stop)
        if logprobs is None:
            pieces = tuple(Piece(p.text, p.token_id, None, p.token) for p in pieces)
        elif kind != "trial":
            pieces = tuple(Piece(p.text, p.token_id, 0.0 if p.logprob is None else p.logprob, p.token) for p in pieces)
        return Reply(kind, played.key, pieces, finish, base + suffix_tokens, base, position, recorded)

    def _continue(self, played: _Played, char: int, position: int, max_tokens: int,
                  stop: Sequence[str]) -> tuple[tuple[Piece, ...], str]:
        n = len(played.ends)
        pieces: list[Piece] = []
        i = position
        if i < n and char > (int(played.ends[i - 1]) if i > 0 else 0):  # the reasoning ends inside token i
            pieces.append(played.piece(i, start=char))
            i += 1
        while len(pieces) < max_tokens and i < n:
            pieces.append(played.piece(i))
            i += 1
        # the end of a text the collection cut at its budget is the engine's limit, as a server's
        # context would cut it: "length", and a request to go on from there gets no token
        cut = i >= n and played.traj.finish_reason == "length"
        return _apply_stop(pieces, stop, "length" if len(pieces) == max_tokens or cut else "stop")

    def _after_end(self, played: _Played, max_tokens: int,
                   stop: Sequence[str]) -> tuple[tuple[Piece, ...], str, int | None]:
        """The answer asked for after a trajectory the collection cut at its budget: nothing was
        recorded there, so the answer full reasoning submits in ``evaluate`` (extracted from the
        recorded text) is written out as the model's; where the text holds none, its last probe's."""
        last = played.grid[-1] if played.grid else None
        answer = extract_answer(played.traj.full_text)
        if answer is None:
            answer = last.answer if last is not None and last.answer is not None else "?"
        text = f"**Final Answer**\n\\[ \\boxed{{{answer}}} \\]"
        pieces = _spread(_tokens_of(played, text), max_tokens)
        out, finish = _apply_stop(pieces, stop, "stop")
        return out, finish, last.pos if last is not None else None

    def _probe(self, played: _Played, position: int, max_tokens: int,
               stop: Sequence[str]) -> tuple[tuple[Piece, ...], str, int | None]:
        if not played.grid:
            raise ReplayError(f"{played.key} has no recorded probes")
        if position < played.grid_pos[0]:  # nothing recorded this early: the next probe's answer is the future
            answer, certain, out_tokens, recorded = None, True, _PROBE_BUDGET, None
        else:
            probe = played.grid[_at_or_before(played.grid_pos, position)]
            answer, certain, out_tokens, recorded = probe.answer, probe.certain, probe.out_tokens, probe.pos
        if answer is None:
            text = " ".join(["\\dots"] * 8)  # no box closed within the probe's tokens
        elif certain:
            text = answer + "} \\]"
        else:
            text = answer + "} Wait, let me check."
        count = min(max_tokens, max(1, out_tokens))
        pieces = _spread(_tokens_of(played, text), count)
        finish = "length" if answer is None and count == max_tokens else "stop"
        pieces_out, finish = _apply_stop(pieces, stop, finish)
        return _pad(pieces_out, count), finish, recorded

    def _trial(self, played: _Played, position: int, char: int, max_tokens: int,
               stop: Sequence[str]) -> tuple[tuple[Piece, ...], str, int | None]:
        trials = played.traj.trials
        if not trials:
            raise ReplayError(f"{played.key} has no recorded DEER trials (deer.jsonl.gz)")
        # By the character where the trial's "Wait" starts, where recorded: a recorded token position
        # counts the text before " wait" encoded alone (its trailing space a token of its own), one
        # more than the tokens wholly inside it here, which would serve the trial before it.
        trial = trials[_at_or_before(played.trial_char, char) if played.trial_char is not None
                       else _at_or_before(played.trial_pos, position)]
        out, finish = trial_reply(trial, max_tokens, stop)
        return out, finish, trial.pos


def trial_reply(trial: Trial, max_tokens: int, stop: Sequence[str]) -> tuple[tuple[Piece, ...], str]:
    """A recorded trial as the replay serves it: its recorded tokens and logprobs, at most
    ``max_tokens`` of them, cut at the first stop string (``benchmarks/trial_confidence.py`` reads
    every recorded trial through it as a live program would)."""
    tokens = _trial_logprobs(trial)
    pieces = [Piece(text, None, lp) for text, lp in tokens][:max_tokens]
    finish = "length" if len(pieces) == max_tokens and len(tokens) > max_tokens else "stop"
    return _apply_stop(pieces, stop, finish)


def _tokens_of(played: _Played, text: str) -> list[Piece]:
    coded = encode(text, played.traj.model_name)
    if coded is None:
        return [Piece(text)]
    ids, ends = coded
    out, lo = [], 0
    for tid, hi in zip(ids, ends):
        out.append(Piece(text[lo:int(hi)], int(tid)))
        lo = max(lo, int(hi))
    return out


def _spread(pieces: list[Piece], count: int) -> list[Piece]:
    """``count`` tokens carrying ``pieces``' text: the surplus merged into the last token."""
    if len(pieces) <= count:
        return list(pieces)
    kept = pieces[: count - 1]
    kept.append(Piece("".join(p.text for p in pieces[count - 1:])))
    return kept


def _pad(pieces: tuple[Piece, ...], count: int) -> tuple[Piece, ...]:
    """The probe's recorded cost: tokens after the text (a stop string's) count, empty."""
    return pieces + (Piece(""),) * max(0, count - len(pieces))


def _apply_stop(pieces: list[Piece], stop: Sequence[str], finish: str) -> tuple[tuple[Piece, ...], str]:
    """Cut at the first stop string, as vLLM does: the text ends before it; the token completing it
    is the last one generated (counted, its text withheld past the cut)."""
    stops = [s for s in stop if s]
    if not stops:
        return tuple(pieces), finish
    longest = max(len(s) for s in stops)
    text = ""
    for i, piece in enumerate(pieces):
        before = len(text)
        text += piece.text
        window_start = max(0, before - longest + 1)
        hits = [at for at in (text.find(s, window_start) for s in stops) if at >= 0]
        if hits:
            cut = min(hits)
            out: list[Piece] = []
            pos = 0
            for p in pieces[: i + 1]:
                keep = max(0, min(len(p.text), cut - pos))
                out.append(Piece(p.text[:keep], p.token_id, p.logprob, p.token_text if keep < len(p.text) else p.token))
                pos += len(p.text)
            return tuple(out), "stop"
    return tuple(pieces), finish
