"""An engine's cost model for the simulator, fitted by least squares from measured timings.

One decode step of continuous batching generates a token for every running request and takes

    step_s = a + b * batch + c * context_tokens

(``context_tokens``: the sum of the running requests' context lengths). A request that joins the
batch first evaluates the prompt tokens its engine has not cached, at ``prefill_s`` per token,
after a fixed ``request_s`` (tokenising, sampling setup, HTTP). ``max_batch`` is how many requests
the engine really decodes together: 1 for llama.cpp in process, which serialises generations.
``prefix_cache`` says what is reused: ``"last"`` (llama.cpp keeps the KV of the last sequence only,
so switching programs re-evaluates the whole context) or ``"program"`` (servers with automatic
prefix caching keep every program's prefix).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

__all__ = ["COST_MODEL_FORMAT", "CostModel", "fit_cost_model", "fit_linear"]

COST_MODEL_FORMAT = "certaindex-cost-model"
PrefixCache = Literal["last", "program"]


@dataclass(frozen=True)
class CostModel:
    a: float  # seconds per decode step
    b: float  # seconds per running request per step
    c: float  # seconds per context token (summed over running requests) per step
    prefill_s: float = 0.0  # seconds per prompt token evaluated
    request_s: float = 0.0  # fixed seconds per request
    max_batch: int = 1
    prefix_cache: PrefixCache = "last"
    probe_suffix_tokens: int = 30  # tokens of the probe suffix (evaluated by every probe)
    meta: dict = field(default_factory=dict)  # engine, machine, command, points: for the record

    def __post_init__(self) -> None:
        for name in ("a", "b", "c", "prefill_s", "request_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"cost model {name} must be a finite number >= 0, got {value!r}")
        if self.a + self.b <= 0:
            raise ValueError("cost model: a decode step must take some time (a + b > 0)")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ValueError(f"cost model max_batch must be an integer >= 1, got {self.max_batch!r}")
        if self.prefix_cache not in ("last", "program"):
            raise ValueError(f"cost model prefix_cache must be 'last' or 'program', got {self.prefix_cache!r}")
        if not isinstance(self.probe_suffix_tokens, int) or self.probe_suffix_tokens < 0:
            raise ValueError(f"cost model probe_suffix_tokens must be an integer >= 0, got {self.probe_suffix_tokens!r}")

    def step_s(self, batch: int, context_tokens: float) -> float:
        """One decode step of ``batch`` requests holding ``context_tokens`` tokens together."""
        return self.a + self.b * batch + self.c * context_tokens

    def steps_s(self, k: int, batch: int, context_tokens: float) -> float:
        """``k`` consecutive steps of the same batch: the context grows by ``batch`` each step."""
        return k * (self.a + self.b * batch + self.c * context_tokens) + self.c * batch * k * (k - 1) / 2

    def join_s(self, new_tokens: int) -> float:
        """A request joining the batch: its fixed cost and the prefill of its uncached tokens."""
        return self.request_s + self.prefill_s * max(0, new_tokens)

    def to_dict(self) -> dict:
        return {"format": COST_MODEL_FORMAT, "version": 1, **asdict(self)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return target

    @classmethod
    def from_dict(cls, data: dict, where: str = "cost model") -> "CostModel":
        if not isinstance(data, dict) or data.get("format") != COST_MODEL_FORMAT:
            raise ValueError(f"{where}: not a {COST_MODEL_FORMAT} file (no matching 'format' field)")
        if data.get("version") != 1:
            raise ValueError(f"{where}: version {data.get('version')!r} is not supported (this reader reads 1)")
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in known}
        missing = {"a", "b", "c"} - fields.keys()
        if missing:
            raise ValueError(f"{where}: missing {', '.join(sorted(missing))}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CostModel":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"cannot read the cost model {path}: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        return cls.from_dict(data, str(path))


def fit_linear(columns: Sequence[Sequence[float]], y: Sequence[float]) -> list[float]:
    """Non-negative least squares for ``y ~ sum(coef_i * column_i)``, by dropping any column whose
    coefficient comes out negative and refitting (small problems: a handful of columns). Columns
    without variation beyond the first (the intercept) get 0, so a constant batch size does not
    split the intercept arbitrarily."""
    X = np.asarray(columns, dtype=float).T
    target = np.asarray(y, dtype=float)
    if X.ndim != 2 or X.shape[0] != target.shape[0] or X.shape[0] == 0:
        raise ValueError("fit_linear needs one value of every column per measurement, and at least one measurement")
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(target)):
        raise ValueError("fit_linear: measurements must be finite")
    active = [0] + [j for j in range(1, X.shape[1]) if np.ptp(X[:, j]) > 0]
    while True:
        coef, *_ = np.linalg.lstsq(X[:, active], target, rcond=None)
        negative = [j for j, v in zip(active, coef) if v < 0]
        if not negative:
            break
        worst = min(negative, key=lambda j: coef[active.index(j)])
        active.remove(worst)
        if not active:
            coef = np.array([])
            break
    result = [0.0] * X.shape[1]
    for j, v in zip(active, coef):
        result[j] = float(v)
    return result


def fit_cost_model(
    steps: Sequence[tuple[int, float, float]],
    joins: Sequence[tuple[int, float]],
    *,
    max_batch: int,
    prefix_cache: PrefixCache,
    probe_suffix_tokens: int = 30,
    meta: dict | None = None,
) -> CostModel:
    """Fit a cost model from measured decode steps ``(batch, context_tokens, seconds per step)``
    and request joins ``(uncached prompt tokens, seconds before the first decode step)``."""
    if len(steps) < 2:
        raise ValueError(f"need at least 2 decode-step measurements, got {len(steps)}")
    if len(joins) < 2:
        raise ValueError(f"need at least 2 join (prefill) measurements, got {len(joins)}")
    batch = [float(s[0]) for s in steps]
    context = [float(s[1]) for s in steps]
    a, b, c = fit_linear([[1.0] * len(steps), batch, context], [s[2] for s in steps])
    if a + b <= 0:  # every step the same: put it all in a
        a = float(np.mean([s[2] for s in steps]))
    request_s, prefill_s = fit_linear([[1.0] * len(joins), [float(j[0]) for j in joins]], [j[1] for j in joins])
    return CostModel(
        a=a, b=b, c=c, prefill_s=prefill_s, request_s=request_s, max_batch=max_batch,
        prefix_cache=prefix_cache, probe_suffix_tokens=probe_suffix_tokens, meta=dict(meta or {}),
    )
