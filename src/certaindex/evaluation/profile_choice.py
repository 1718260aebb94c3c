"""Which early-exit profile a run or a request gets, and why: pure logic, no I/O.

The model name is taken, in this order, from ``--model`` (it overrides the rest), the request's
``model``, and the model the engine serves (an upstream's ``GET /v1/models``, read by the caller).
The first shipped profile whose family patterns match that name is chosen; a name that matches no
family gets :data:`FALLBACK_PROFILE` (``generic``; ``conservative`` where no such profile ships). A
profile that reads DEER trials needs token logprobs: on an engine that returns none, the
``conservative`` profile (which needs none) stands in. Explicit flags (``--profile``,
``--calibration``, ``--k``/``--probe-interval``) are resolved by the caller and override everything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from certaindex.evaluation.profiles import CONSERVATIVE, Profile, matching_profile, shipped_profiles
from certaindex.programs.cot import CoTConfig

__all__ = ["FALLBACK_PROFILE", "ProfileChoice", "apply_profile", "choose_profile", "reads_trials", "without_trials"]

# The profile for reasoning models that match no family (where no profile of this name is given,
# the conservative one is used).
FALLBACK_PROFILE = "generic"


@dataclass(frozen=True)
class ProfileChoice:
    """The profile chosen (None: Dynasor's rule with the flags), the model name it was chosen for
    (None: none known) and a short reason a user can read, e.g. ``request model 'qwen3-8b'``."""

    profile: Profile | None
    reason: str
    model: str | None = None

    @property
    def name(self) -> str | None:
        return None if self.profile is None else self.profile.name

    def to_dict(self) -> dict[str, str | None]:
        return {"profile": self.name or "none", "profile_reason": self.reason}


def reads_trials(profile: Profile | None) -> bool:
    """Whether ``profile`` scores DEER trials (which are read from token logprobs)."""
    return profile is not None and profile.kind == "score" and "tr" in str(profile.rule.get("schedule", "")).split("+")


def without_trials(profile: Profile, profiles: Sequence[Profile] | None = None) -> Profile:
    """The profile to run where no DEER trials can be taken (an engine without token logprobs live,
    a trajectory without recorded trials in replay): ``profile`` itself unless it reads trials, else
    the ``conservative`` profile of ``profiles`` (default: the shipped ones), which reads none. The
    one rule of the proxy, ``solve`` and ``evaluate --policy default``."""
    if not reads_trials(profile):
        return profile
    stand_in = _named(list(profiles) if profiles is not None else shipped_profiles(), CONSERVATIVE)
    if stand_in is None:
        raise ValueError(f"{profile.name} reads DEER trials and no {CONSERVATIVE!r} profile is available")
    return stand_in


def _named(profiles: Sequence[Profile], name: str) -> Profile | None:
    return next((p for p in profiles if p.name == name), None)


def _fallback(profiles: Sequence[Profile]) -> Profile:
    found = _named(profiles, FALLBACK_PROFILE) or _named(profiles, CONSERVATIVE)
    if found is None:
        raise ValueError(f"neither a {FALLBACK_PROFILE!r} nor a {CONSERVATIVE!r} profile is available")
    return found


def _model_and_source(flag_model: str | None, request_model: str | None, served_models: Sequence[str],
                      served_by: str) -> tuple[str | None, str]:
    if flag_model:
        return flag_model, f"--model '{flag_model}'"
    if request_model:
        return request_model, f"request model '{request_model}'"
    if served_models:
        return served_models[0], f"{served_by} serves '{served_models[0]}'"
    return None, "no model name known"


def choose_profile(*, flag_model: str | None = None, request_model: str | None = None,
                   served_models: Sequence[str] = (), returns_logprobs: bool = True,
                   engine_name: str = "the engine", served_by: str = "the engine",
                   profiles: Sequence[Profile] | None = None) -> ProfileChoice:
    """The profile for the model named by ``flag_model``, else ``request_model``, else the first of
    ``served_models``; the fallback profile when none is named or none matches. ``returns_logprobs``
    False: a profile that reads DEER trials gives way to the conservative one, and the reason says so."""
    profiles = list(profiles) if profiles is not None else shipped_profiles()
    model, source = _model_and_source(flag_model, request_model, served_models, served_by)
    picked = matching_profile(model or "", profiles)
    if picked is None:
        picked = _fallback(profiles)
        source += f"{', which matches no model family' if model else ''}: the {picked.name} profile"
    if reads_trials(picked) and not returns_logprobs:
        source += (f"; its profile {picked.name} reads DEER trials, whose confidence needs token logprobs, "
                   f"which {engine_name} does not return")
        picked = without_trials(picked, profiles)
    return ProfileChoice(picked, source, model)


def apply_profile(config: CoTConfig, profile: Profile) -> CoTConfig:
    """``config`` running ``profile``: its probe protocol (interval, suffix, length) and rule."""
    changes: dict = {"probe_interval": profile.probe_interval, "probe_suffix": profile.probe_suffix,
                     "probe_tokens": profile.probe_tokens}
    if profile.kind == "score":
        changes["certainty"] = profile.rule
    elif profile.kind == "dynasor":
        changes["k"] = int(profile.rule["k"])
    return dataclasses.replace(config, **changes)
