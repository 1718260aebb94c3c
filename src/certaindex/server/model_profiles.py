"""The early-exit profile each chat request runs, and the model names the proxy accepts.

With ``serve`` picking profiles per model (no ``--model``, ``--profile``, ``--calibration``,
``--k`` or ``--probe-interval``), a request's profile is chosen from its ``model``, else from the
upstream's served model (:mod:`certaindex.evaluation.profile_choice`), once per model name (and
whether the upstream lists it without token logprobs, as ``GET /v1/models`` last said): the
choice is cached, logged the first time a program runs with it, and reported in ``/health`` and ``usage.certaindex``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

from certaindex.evaluation.profile_choice import ProfileChoice, apply_profile, choose_profile
from certaindex.programs.cot import CoTConfig
from certaindex.server.errors import ProxyError
from certaindex.server.settings import ServerSettings

log = logging.getLogger("certaindex.server")


def unknown_model(model: object, served: Sequence[str], aliases: Sequence[str] = ()) -> ProxyError | None:
    """A 404 (OpenAI's error shape, as vLLM answers) for a request ``model`` that is neither served
    nor an alias; None when it is, when the request names none, or when the served list is unknown."""
    if not served or model is None or model in served or model in aliases:
        return None
    known = ", ".join(repr(m) for m in [*served, *[a for a in aliases if a not in served]])
    return ProxyError(404, f"the model {model!r} does not exist here; this proxy serves {known}",
                      "invalid_request_error", param="model", code="model_not_found")


class ModelProfiles:
    """Per-model profile choices for one proxy (a bounded cache: model names come from clients)."""

    def __init__(self, settings: ServerSettings, returns_logprobs: bool, engine_name: str,
                 max_models: int = 256) -> None:
        self.settings = settings
        self.returns_logprobs = returns_logprobs
        self.engine_name = engine_name
        self.max_models = max_models
        self._chosen: OrderedDict[tuple[str | None, str | None, bool], tuple[ProfileChoice, CoTConfig]] = OrderedDict()
        self._announced: OrderedDict[tuple[str | None, str], None] = OrderedDict()

    def choose(self, request_model: str | None, served: Sequence[str],
               without_logprobs: Sequence[str] = ()) -> tuple[ProfileChoice | None, CoTConfig]:
        """The profile for this request (None: the settings' rule, not a profile) and the chain of
        thought settings it runs with, before the request's own options. ``without_logprobs``: the
        served models the upstream lists without token logprobs (a profile reading DEER trials gives
        way there, as on an engine that returns none)."""
        if not self.settings.profile_per_model:
            return self.settings.profile, self.settings.cot
        model = request_model or (served[0] if served else None)
        listed_without = model is not None and model in without_logprobs
        key = (request_model or None, None if request_model else model, listed_without)
        if key in self._chosen:
            self._chosen.move_to_end(key)
            return self._chosen[key]
        engine_name = (f"the upstream (its GET /v1/models lists no logprobs for {model!r})" if listed_without
                       else self.engine_name)
        choice = choose_profile(request_model=request_model, served_models=served,
                                returns_logprobs=self.returns_logprobs and not listed_without,
                                engine_name=engine_name, served_by="the upstream")
        cot = apply_profile(self.settings.cot, choice.profile) if choice.profile is not None else self.settings.cot
        self._chosen[key] = (choice, cot)
        while len(self._chosen) > self.max_models:
            self._chosen.popitem(last=False)
        return choice, cot

    def announce(self, choice: ProfileChoice) -> None:
        """Log the profile an early-exit program runs, the first time it runs for this model and
        reason (not for requests passed through: they run no profile)."""
        key = (choice.model, choice.reason)
        if key in self._announced:
            return
        self._announced[key] = None
        while len(self._announced) > self.max_models:
            self._announced.popitem(last=False)
        log.info("early-exit profile %s for model %s (%s)", choice.profile.label if choice.profile else "none",
                 repr(choice.model) if choice.model else "unknown", choice.reason)

    def report(self, served: Sequence[str], without_logprobs: Sequence[str] = ()) -> dict[str, object]:
        """For ``/health``: the profile a request without a model gets, and each model's so far."""
        default, _ = self.choose(None, served, without_logprobs)
        return {
            "profile": default.to_dict() if default is not None else None,
            "profiles_by_model": {model: choice.to_dict() for (model, _, _), (choice, _) in self._chosen.items()
                                  if model is not None},
        }
