"""``certaindex calibrate DIR`` on a folder of trace files (written by ``serve --shadow DIR`` or by
``certaindex record``): Dynasor's rule over a grid of k and probe intervals (multiples of the
recorded one), certified by Learn-then-Test, written as a profile for ``--calibration FILE``.
Says how many more traces it needs when nothing useful can be certified yet (exit status 3).
:mod:`certaindex.cli.traces` routes here when PATH is a folder that is not a Governor folder."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

from certaindex.cli.common import EXIT_NO_ANSWER, out

__all__ = ["calibrate_folder"]

FOLDER_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FOLDER_ALPHA = 0.05
LABELS = {
    "full": "harmful = the early answer differs from the model's own full-reasoning answer (the traces have no "
            "gold answers; this is the conservative label: an exit that changes the answer counts as harmful even "
            "where full reasoning was wrong)",
    "gold": "harmful = the early answer is wrong where full reasoning's was right (gold answers)",
}


def _trace_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))


def _int_list(option: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} takes integers >= 1, got {text!r}")
    return values


def calibrate_folder(args: argparse.Namespace, path: Path) -> int:
    from certaindex.evaluation.evaluate import probe_grid
    from certaindex.evaluation.self_calibration import calibrate_dynasor
    from certaindex.traces.format import TraceSettings, read_traces

    alpha = FOLDER_ALPHA if args.alpha is None else args.alpha
    for option, value in (("--alpha", alpha), ("--delta", args.delta)):
        if not 0 < value < 1:
            raise ValueError(f"{option} must be in (0, 1), got {value}")
    files = _trace_files(path)
    if not files:
        raise ValueError(f"{path}: no trace files (*.jsonl, *.jsonl.gz) in this folder; record some with "
                         "`certaindex serve --shadow DIR` or `certaindex record`")
    sets = [read_traces(f, allow_truncated=args.allow_truncated) for f in files]  # errors name file:line
    sets = [s for s in sets if s.records]
    if not sets:
        raise ValueError(f"{path}: {len(files)} trace file(s) but no traces in them yet")
    models = sorted({s.header.model for s in sets})
    if len(models) > 1:
        raise ValueError(f"{path} mixes traces of {len(models)} models ({', '.join(models)}): a profile is for one "
                         "model; calibrate each model's files in a folder of their own")
    protocols = {(s.settings.granularity, s.settings.probe_suffix, s.settings.probe_tokens): s.path for s in sets}
    if len(protocols) > 1:
        (a, fa), (b, fb) = list(protocols.items())[:2]
        raise ValueError(f"{path} mixes probe settings: {fa} has interval {a[0]}, {a[2]} probe tokens, suffix {a[1]!r}; "
                         f"{fb} has interval {b[0]}, {b[2]} probe tokens, suffix {b[1]!r}")
    (g, suffix, probe_tokens), = protocols
    model = models[0]
    records = [r for s in sets for r in s.records]
    budgets = [s.settings.budget for s in sets for _ in s.records]
    has_gold = all(r.gold.strip() for r in records)
    reference = args.reference if args.reference != "auto" else ("gold" if has_gold else "full")
    if reference == "gold" and not has_gold:
        raise ValueError(f"--reference gold: {sum(not r.gold.strip() for r in records)} of {len(records)} traces in "
                         f"{path} have no gold answer (shadow traffic has none); use --reference full")
    ks = _int_list("--ks", args.ks) or list(FOLDER_KS)
    grid_settings = TraceSettings(granularity=g, budget=max(budgets), probe_suffix=suffix, probe_tokens=probe_tokens)
    policies = probe_grid(grid_settings, _int_list("--intervals", args.intervals), ks)
    cal = calibrate_dynasor(records, budgets, [(p.probe_interval, p.k) for p in policies], reference, alpha, args.delta)

    n = cal.n
    full_mean = cal.candidates[0].full_mean_tokens
    out.print(f"{n} traces of {model} from {len(sets)} file(s) in {path}; full reasoning: {full_mean:.0f} tokens on average")
    out.print(f"label: {LABELS[reference]}")
    guarantee = f"harmful-exit rate <= {alpha:g} with probability >= {1 - args.delta:g} (Learn-then-Test)"
    if cal.chosen is None:
        if cal.next_target is not None and cal.more_needed is not None:
            t = cal.next_target
            out.print(f"[yellow]not certified yet: needs about {cal.more_needed} more traces[/yellow] ({n} now, about "
                      f"{cal.next_target_n} in all) before {t.label} can be certified for {guarantee}, if its "
                      f"harmful rate stays at {t.harmful}/{n} (it saves {100 * t.saved:.1f}% of the tokens here)")
        else:
            best = max(cal.candidates, key=lambda c: c.saved)
            out.print(f"[yellow]no setting that saves tokens can be certified at alpha={alpha:g}[/yellow]: the settings "
                      f"tested first change the answer too often (e.g. {best.label}: {best.harmful}/{n} harmful); "
                      "more traces will not help unless the rate falls; a larger --alpha or a smaller probe interval might")
        out.print("no profile written")
        return EXIT_NO_ANSWER
    c = cal.chosen
    j = cal.candidates.index(c)
    out.print(f"certified: {c.label}, {guarantee}: {c.harmful} harmful of {c.exits} early exits on {n} traces "
              f"(p={cal.ltt.p_values[j]:.3g} <= delta {args.delta:g}); saves {100 * c.saved:.1f}% of the tokens "
              f"({c.mean_tokens:.0f} against {full_mean:.0f})")
    if cal.next_target is not None and cal.more_needed:
        t = cal.next_target
        out.print(f"a cheaper setting, {t.label} (saves {100 * t.saved:.1f}%), needs about {cal.more_needed} more traces")
    name = args.name or re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-").lower() or "custom"
    command = (f"certaindex calibrate {path} --alpha {alpha:g} --delta {args.delta:g} --reference {reference}"
               + (f" --ks {args.ks}" if args.ks else "") + (f" --intervals {args.intervals}" if args.intervals else ""))
    profile = {
        "format": "certaindex-profile",
        "version": 1,
        "name": name,
        "models": [args.models] if args.models else [re.escape(model)],
        "probe_suffix": suffix,
        "probe_interval": c.interval,
        "probe_tokens": probe_tokens,
        "rule": {"kind": "dynasor", "k": c.k},
        "description": f"Dynasor's rule calibrated on {n} recorded traces of {model}",
        "calibration": {
            "command": command,
            "traces": str(path),
            "files": len(sets),
            "model": model,
            "n": n,
            "reference": reference,
            "label": LABELS[reference],
            "alpha": alpha,
            "delta": args.delta,
            "guarantee": guarantee,
            "p_value": cal.ltt.p_values[j],
            "harmful_exits": c.harmful,
            "early_exits": c.exits,
            "mean_tokens": round(c.mean_tokens, 3),
            "full_mean_tokens": round(full_mean, 3),
            "saved": round(c.saved, 6),
            "recorded_probe_interval": g,
            "settings_tested": len(cal.candidates),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(profile, indent=1) + "\n", encoding="utf-8")
    out.print(f"profile {name} written to {target} (use it with --calibration {target})")
    return 0
