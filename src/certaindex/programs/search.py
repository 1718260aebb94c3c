"""Reward-guided search: best-of-N and a REBASE-style step-wise tree search behind a PRM interface.

A process reward model (PRM) scores the steps of a partial solution. Real PRMs plug in as any
:class:`Scorer` (a callable, or :class:`HTTPScorer` for a scoring server). Two real, simple scorers
ship with certaindex for when no PRM is at hand:

* :class:`SelfConfidenceScorer`: the policy model's own confidence in each step, the geometric-mean
  token probability of the step (from the logprobs the engine returned while generating it);
* :func:`majority_agreement_rewards`: for complete candidates, the share of candidates whose answer
  agrees with this one's (a self-consistency reward).

Certaindex for search is the mean aggregated reward of the candidates (the paper's choice for
REBASE and MCTS); search stops once it reaches ``threshold``. Partial candidates whose reward is
``reject_margin`` behind the best are rejected early, so their continuations are never generated.

A candidate the engine cuts short (``length`` before what was asked: its context filled), or whose
next step it refuses because its context is full, ends there, cut, with what it wrote (answered if
that holds an answer); the search goes on with the others and never asks for that step again.
Refused before any step was written, the prompt itself does not fit: that error stands.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import httpx
import numpy as np

from certaindex.core.answers import answers_equal, extract_answer
from certaindex.engines.base import Choice, Engine, EngineError, GenerationRequest
from certaindex.engines.context_full import cut_by_engine
from certaindex.core.prompting import DEFAULT_SYSTEM_PROMPT
from certaindex.programs.base import open_prompt
from certaindex.programs.self_consistency import NoAnswerError
from certaindex.core.signals import aggregate_rewards, cluster_answers, reward_certaindex
from certaindex.core.validation import require

STEP_SEPARATOR = "\n\n"


@dataclass
class Node:
    """A partial (or complete) solution: its steps, per-step rewards and what it cost."""

    steps: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    step_confidences: list[float] = field(default_factory=list)
    done: bool = False
    tokens: int = 0
    # Ended by the engine: its last step was cut on ``length`` short of what was asked, or its next
    # step was refused because the engine's context is full.
    cut: bool = False

    @property
    def text(self) -> str:
        return "".join(self.steps)

    def reward(self, how: Literal["min", "last", "mean", "prod"] = "min") -> float:
        return aggregate_rewards(self.rewards, how) if self.rewards else 0.0


class Scorer(Protocol):
    """A PRM: rewards in [0, 1] for every step of a partial solution."""

    async def __call__(self, question: str, node: Node) -> list[float]: ...


class SelfConfidenceScorer:
    """The policy model's own confidence per step: exp(mean token logprob) of the step, in [0, 1]."""

    async def __call__(self, question: str, node: Node) -> list[float]:
        if len(node.step_confidences) != len(node.steps):
            raise ValueError("SelfConfidenceScorer needs logprobs: run the search with an engine that returns them")
        return list(node.step_confidences)


class HTTPScorer:
    """A PRM behind HTTP: POST {"question", "steps"} to ``url``, expect {"rewards": [one per step]}."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def __call__(self, question: str, node: Node) -> list[float]:
        try:
            response = await self._client.post(self.url, json={"question": question, "steps": node.steps})
            response.raise_for_status()
            rewards = response.json()["rewards"]
        except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
            raise EngineError(f"reward model at {self.url} failed: {exc}") from exc
        if not isinstance(rewards, list) or len(rewards) != len(node.steps):
            raise EngineError(f"reward model at {self.url} returned {rewards!r:.100} for {len(node.steps)} steps")
        values = [float(r) for r in rewards]
        if any(not 0 <= r <= 1 or math.isnan(r) for r in values):
            raise EngineError(f"reward model at {self.url} returned rewards outside [0, 1]: {values}")
        return values

    async def aclose(self) -> None:
        await self._client.aclose()


def majority_agreement_rewards(answers: Sequence[str | None]) -> list[float]:
    """Reward of each complete candidate: the share of all candidates that agree with its answer."""
    n = len(answers)
    reward = [0.0] * n
    for cluster in cluster_answers(answers, answers_equal):
        for i in cluster:
            reward[i] = len(cluster) / n
    return reward


def step_confidence(choice: Choice) -> float | None:
    if not choice.logprobs:
        return None
    return float(math.exp(np.mean([lp.logprob for lp in choice.logprobs])))


@dataclass(frozen=True)
class SearchConfig:
    width: int = 8  # candidates (best-of-N) or expansions per depth (REBASE)
    max_depth: int = 12  # steps per candidate
    step_tokens: int = 96  # tokens per step
    max_tokens: int = 1024  # tokens per best-of-N candidate
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = 0
    aggregate: Literal["min", "last", "mean", "prod"] = "min"
    balance_temperature: float = 0.2  # REBASE softmax temperature over node rewards
    reject_margin: float = 0.5  # drop partial candidates this far behind the best (1 disables)
    threshold: float = 0.9  # certaindex (mean reward of finished candidates) that stops the search
    logprobs: int | None = 1  # SelfConfidenceScorer needs the sampled tokens' logprobs
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        checks = [
            (self.width >= 1, f"width must be at least 1, got {self.width}"),
            (self.max_depth >= 1, f"max_depth must be at least 1, got {self.max_depth}"),
            (self.step_tokens >= 1, f"step_tokens must be at least 1, got {self.step_tokens}"),
            (self.balance_temperature > 0, f"balance_temperature must be > 0, got {self.balance_temperature}"),
            (0 <= self.reject_margin <= 1, f"reject_margin must be in [0, 1], got {self.reject_margin}"),
            (0 <= self.threshold <= 1, f"threshold must be in [0, 1], got {self.threshold}"),
        ]
        require(checks)


@dataclass
class SearchResult:
    question: str
    answer: str
    best: Node
    finished: list[Node]
    total_tokens: int
    stop_reason: Literal["certain", "budget"]
    certaindex: float
    rejected: int = 0

    @property
    def samples_cut(self) -> int:
        """Finished candidates the engine cut short or refused for a full context (:class:`Node`)."""
        return sum(n.cut for n in self.finished)


def rebase_allocation(rewards: Sequence[float], budget: int, temperature: float) -> list[int]:
    """REBASE: split ``budget`` expansions over nodes by softmax(reward / temperature), rounding so
    the total is exactly ``budget`` (largest remainders first)."""
    if budget < 0:
        raise ValueError("budget must be >= 0")
    if not rewards:
        return []
    r = np.asarray(rewards, dtype=float) / temperature
    weights = np.exp(r - r.max())
    shares = weights / weights.sum() * budget
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts))[: budget - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


async def best_of_n(
    engine: Engine,
    question: str,
    config: SearchConfig = SearchConfig(),
    scorer: Scorer | None = None,
) -> SearchResult:
    """Sample ``width`` complete candidates, score them, return the best. Without a PRM the reward
    is majority agreement (so best-of-N becomes a reward-ranked self-consistency)."""
    question, prompt = await open_prompt(engine, question, config.system_prompt)
    completion = await engine.generate(
        GenerationRequest(
            prompt=prompt,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
            n=config.width,
            logprobs=config.logprobs if scorer is not None else None,
        )
    )
    nodes = []
    for choice in completion.choices:
        confidence = step_confidence(choice)
        cut = cut_by_engine(choice.finish_reason, choice.completion_tokens, config.max_tokens)
        nodes.append(
            Node([choice.text], [], [confidence] if confidence is not None else [], True, choice.completion_tokens, cut)
        )
    answers = [extract_answer(n.text) for n in nodes]
    if scorer is None:
        for node, reward in zip(nodes, majority_agreement_rewards(answers)):
            node.rewards = [reward]
    else:
        for node in nodes:
            node.rewards = await scorer(question, node)
    total = sum(n.tokens for n in nodes)
    scored = [(n.reward(config.aggregate), n, a) for n, a in zip(nodes, answers) if a is not None]
    if not scored:
        cut = sum(n.cut for n in nodes)
        raise NoAnswerError(f"none of the {len(nodes)} candidates gave an answer", total, len(nodes), cut)
    best_reward, best, answer = max(scored, key=lambda t: t[0])
    certaindex = reward_certaindex([s for s, _, _ in scored])
    return SearchResult(question, answer, best, nodes, total, "budget", certaindex)


async def rebase_search(
    engine: Engine,
    question: str,
    scorer: Scorer,
    config: SearchConfig = SearchConfig(),
) -> SearchResult:
    """Step-wise tree search (REBASE): expand the frontier one step at a time, giving more
    expansions to better-rewarded nodes; stop when ``width`` candidates finished, the depth runs
    out, or the certaindex of finished candidates reaches ``threshold``."""
    question, prompt = await open_prompt(engine, question, config.system_prompt)
    frontier: list[Node] = [Node()]
    finished: list[Node] = []
    total = 0
    rejected = 0
    stop_reason: Literal["certain", "budget"] = "budget"
    certaindex = 0.0
    step_seed = config.seed
    for _depth in range(config.max_depth):
        budget = config.width - len(finished)
        if budget <= 0 or not frontier:
            break
        allocation = rebase_allocation([n.reward(config.aggregate) for n in frontier], budget, config.balance_temperature)
        children: list[Node] = []
        for node, count in zip(frontier, allocation):
            if count == 0:
                continue
            expanded = await _expand(engine, question, prompt + node.text, node, count, config, step_seed, scorer)
            step_seed = None if step_seed is None else step_seed + count
            total += sum(child.tokens - node.tokens for child in expanded)
            children.extend(expanded)
        finished.extend(c for c in children if c.done)
        frontier = [c for c in children if not c.done]
        if frontier and config.reject_margin < 1:
            best = max(c.reward(config.aggregate) for c in frontier)
            kept = [c for c in frontier if c.reward(config.aggregate) >= best - config.reject_margin]
            rejected += len(frontier) - len(kept)
            frontier = kept
        answered = [n for n in finished if extract_answer(n.text) is not None]
        if answered:
            certaindex = reward_certaindex([n.reward(config.aggregate) for n in answered])
            if certaindex >= config.threshold:
                stop_reason = "certain"
                break
    answered = [n for n in finished if extract_answer(n.text) is not None]
    if not answered:
        cut = sum(n.cut for n in finished)
        raise NoAnswerError(
            f"none of the {len(finished)} finished candidates gave an answer", total, len(finished), cut
        )
    best = max(answered, key=lambda n: n.reward(config.aggregate))
    return SearchResult(
        question, extract_answer(best.text) or "", best, finished, total, stop_reason, certaindex, rejected
    )


async def _expand(
    engine: Engine, question: str, prompt: str, node: Node, count: int, config: SearchConfig,
    seed: int | None, scorer: Scorer,
) -> list[Node]:
    """``count`` children of ``node``, one step each, scored. A step the engine cuts short ends its
    child cut; a request it refuses because its context is full ends ``node`` itself, cut (no child)."""
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=config.step_tokens,
        stop=(STEP_SEPARATOR,),
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
        n=count,
        logprobs=config.logprobs,
    )
    try:
        completion = await engine.generate(request)
    except EngineError as exc:
        if not (node.steps and exc.context_full):
            raise  # refused before any step: the prompt itself does not fit (or another failure)
        return [dataclasses.replace(node, done=True, cut=True)]
    children = []
    for choice in completion.choices:
        confidence = step_confidence(choice)
        cut = cut_by_engine(choice.finish_reason, choice.completion_tokens, config.step_tokens)
        # Servers drop the stop string, so "stop" means the separator or the model's end: a step
        # with a boxed answer, or an empty step, finishes the candidate; so does the engine's cut.
        ended = (choice.finish_reason == "stop" and "\\boxed{" in choice.text) or not choice.text.strip() or cut
        child = Node(
            steps=node.steps + [choice.text + ("" if ended else STEP_SEPARATOR)],
            rewards=list(node.rewards),
            step_confidences=node.step_confidences + ([confidence] if confidence is not None else []),
            done=ended,
            tokens=node.tokens + choice.completion_tokens,
            cut=cut,
        )
        child.rewards = await scorer(question, child)
        children.append(child)
    return children
