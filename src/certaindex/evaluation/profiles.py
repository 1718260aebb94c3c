"""Early-exit profiles: the probe protocol and stopping rule certaindex applies to a model family.

A profile is a small JSON file::

    {"format": "certaindex-profile", "version": 1, "name": "r1-distill-qwen",
     "models": ["r1-distill-qwen"],               # case-insensitive regexes searched in the model name
     "probe_suffix": "**Final Answer**\\n\\n\\[ \\boxed{", "probe_interval": 64, "probe_tokens": 32,
     "rule": {"kind": "dynasor", "k": 16},          # pluggable: the "kind" picks the rule
     "calibration": {...}}                          # how and on what it was chosen (free-form)

The shipped profiles live in ``certaindex/data/profiles/``; :func:`profile_for_model` picks the first
whose patterns match the model name, else the fallback (:func:`fallback_profile`): ``generic``, the
score fitted to transfer across model families (it reads DEER trials, so it needs token logprobs),
or ``conservative`` for an engine without logprobs. Rule kinds are
registered in :data:`RULE_KINDS`; a profile with a kind this version does not know is rejected on
load with a clear message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "CONSERVATIVE",
    "GENERIC",
    "PROFILE_FORMAT",
    "Profile",
    "fallback_profile",
    "RULE_KINDS",
    "load_profile",
    "parse_profile",
    "matching_profile",
    "profile_for_model",
    "shipped_profiles",
]

PROFILE_FORMAT = "certaindex-profile"
PROFILE_VERSION = 1
CONSERVATIVE = "conservative"
GENERIC = "generic"  # the default for reasoning models of no known family (issue 19)


def _check_dynasor(rule: dict[str, Any]) -> None:
    k = rule.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"a dynasor rule needs an integer k >= 1, got {k!r}")


def _check_score(rule: dict[str, Any]) -> None:
    """A fitted certainty score: ``schedule`` (what is observed), ``model`` (the logistic score's
    parameters), ``threshold`` (exit when the score reaches it; null: never exit, i.e. full
    reasoning, where no threshold could be certified) and the optional trial settings."""
    from certaindex.core.exit_score import CONFIDENCE_RULES, ScoreModel
    from certaindex.evaluation.score_policy import check_schedule

    schedule = rule.get("schedule")
    if not isinstance(schedule, str) or not schedule:
        raise ValueError("a score rule needs a \"schedule\" such as \"bx+tc+g512+tr\"")
    check_schedule(schedule)
    threshold = rule.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0 <= threshold <= 1):
        raise ValueError(f"a score rule's threshold must be a number in [0, 1] or null, got {threshold!r}")
    ScoreModel.from_dict(rule.get("model"))
    trials = rule.get("trials")
    if "tr" in schedule.split("+") and not (isinstance(trials, dict) and isinstance(trials.get("suffix"), str)):
        raise ValueError("a score rule whose schedule has trials (tr) needs \"trials\": {\"suffix\": ...}")
    if isinstance(trials, dict):
        if trials.get("confidence_rule", "avg1") not in CONFIDENCE_RULES:
            raise ValueError(f"a score rule's trials.confidence_rule must be one of {', '.join(CONFIDENCE_RULES)}, "
                             f"got {trials.get('confidence_rule')!r}")
        if not isinstance(trials.get("require_think_close", False), bool):
            raise ValueError("a score rule's trials.require_think_close must be true or false, "
                             f"got {trials.get('require_think_close')!r}")


# kind -> validator of the rule's parameters.
RULE_KINDS: dict[str, Any] = {"dynasor": _check_dynasor, "score": _check_score}


@dataclass(frozen=True)
class Profile:
    name: str
    models: tuple[str, ...]
    probe_suffix: str
    probe_interval: int
    rule: dict[str, Any]
    probe_tokens: int = 32
    description: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.rule["kind"])

    def matches(self, model_name: str) -> bool:
        return any(re.search(p, model_name, re.IGNORECASE) for p in self.models)

    @property
    def label(self) -> str:
        if self.kind == "score":
            thr = self.rule.get("threshold")
            return f"{self.name} (score {self.rule['schedule']}, threshold {'none' if thr is None else f'{thr:.4f}'})"
        params = ", ".join(f"{k}={v}" for k, v in self.rule.items() if k != "kind")
        return f"{self.name} ({self.kind} {params}, interval {self.probe_interval})"


def parse_profile(data: Any, source: str = "profile") -> Profile:
    """A :class:`Profile` from a JSON object; ``ValueError`` naming ``source`` if malformed."""
    try:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"not a certaindex profile (needs \"format\": \"{PROFILE_FORMAT}\")")
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile version {data.get('version')!r} is not supported (this certaindex reads {PROFILE_VERSION})")
        rule = data.get("rule")
        if not isinstance(rule, dict) or "kind" not in rule:
            raise ValueError("needs a \"rule\" object with a \"kind\"")
        if rule["kind"] not in RULE_KINDS:
            raise ValueError(f"rule kind {rule['kind']!r} is unknown (known: {', '.join(sorted(RULE_KINDS))})")
        RULE_KINDS[rule["kind"]](rule)
        interval = data.get("probe_interval")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"probe_interval must be an integer >= 1, got {interval!r}")
        models = data.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("models must be a list of regular expressions")
        for m in models:
            re.compile(m)
        suffix = data.get("probe_suffix")
        if not isinstance(suffix, str) or not suffix:
            raise ValueError("probe_suffix must be a non-empty string")
        return Profile(
            name=str(data.get("name") or "unnamed"), models=tuple(models), probe_suffix=suffix,
            probe_interval=interval, rule=dict(rule), probe_tokens=int(data.get("probe_tokens", 32)),
            description=str(data.get("description", "")), calibration=dict(data.get("calibration") or {}),
        )
    except (ValueError, re.error, TypeError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: profile is not valid JSON ({exc.msg})") from None
    return parse_profile(data, str(path))


@lru_cache(maxsize=1)
def _shipped() -> tuple[Profile, ...]:
    folder = resources.files("certaindex") / "data" / "profiles"
    profiles = [parse_profile(json.loads(f.read_text(encoding="utf-8")), f"certaindex/data/profiles/{f.name}")
                for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name.endswith(".json")]
    return tuple(sorted(profiles, key=lambda p: p.name == CONSERVATIVE))


def shipped_profiles() -> list[Profile]:
    """The profiles inside the package, in matching order (the conservative fallback last)."""
    return list(_shipped())


def fallback_profile(profiles: list[Profile] | None = None, logprobs: bool = True) -> Profile:
    """The profile for a model no profile's patterns match: ``generic`` where it is available and
    the engine returns token logprobs (its score reads DEER trials), else ``conservative``."""
    profiles = profiles if profiles is not None else shipped_profiles()
    named = {p.name: p for p in profiles}
    for name in ((GENERIC, CONSERVATIVE) if logprobs else (CONSERVATIVE,)):
        if name in named:
            return named[name]
    raise ValueError("no profile matches and no conservative profile is available")


def matching_profile(model_name: str, profiles: Sequence[Profile]) -> Profile | None:
    """The first of ``profiles`` whose patterns match ``model_name`` (the conservative profile matches
    none; ``generic`` may name families it was chosen for); None for no name or no match. The one
    matching rule of :func:`profile_for_model` and the proxy's per-request choice."""
    if not model_name:
        return None
    return next((p for p in profiles if p.name != CONSERVATIVE and p.matches(model_name)), None)


def profile_for_model(model_name: str, profiles: list[Profile] | None = None, logprobs: bool = True) -> Profile:
    """The first profile whose patterns match ``model_name``, else :func:`fallback_profile`."""
    profiles = profiles if profiles is not None else shipped_profiles()
    return matching_profile(model_name, profiles) or fallback_profile(profiles, logprobs)
