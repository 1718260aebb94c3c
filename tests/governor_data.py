"""Hand-made Governor folders for tests: write_run() writes one <model>__<dataset>__seed_<s> folder
in the source's format (gzip JSONL, CSV with every field a string, some nested values as Python
literal strings)."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

MODEL_NAME = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def traj(pid: int, target: str, tokens: int, final: str | None, correct: bool = True, **extra: Any) -> dict[str, Any]:
    return {"problem_id": pid, "dataset": "math500", "problem": f"problem {pid}", "target": target,
            "full_text": f"<think>reasoning {pid}</think> The answer is $\\boxed{{{final}}}$.",
            "tokens_used": tokens, "finished_naturally": True, "finish_reason": "stop",
            "final_answer": final, "final_correct": correct,
            "run_settings": {"model": MODEL_NAME, "dataset": "math500"}, **extra}


def probe_rows(pid: int, answers: list[str | None], certain: list[bool] | None = None, out_tokens: int = 10,
               step: int = 64) -> list[list[str]]:
    """One CSV row per probe at 64, 128, ...; every value a string as in the source."""
    certain = certain or [True] * len(answers)
    return [[str(pid), "math500", MODEL_NAME, "42", str(step * (i + 1)), str(i + 1), a or "",
             str(c), str(out_tokens), "100", "0.5"] for i, (a, c) in enumerate(zip(answers, certain))]


HEADER = ["problem_id", "dataset", "model", "base_seed", "token_position", "probe_id", "probe_answer",
          "is_certain", "probe_out_tokens", "probe_prompt_tokens", "probe_latency_seconds"]


def write_gz(path: Path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)


def write_run(root: Path, trajs: list[dict[str, Any]], rows: list[list[str]], *, name: str = "r1-distill-qwen-7b__math500__seed_42",
              events: dict[int, list[dict[str, Any]]] | None = None, deer: dict[int, list[dict[str, Any]]] | None = None,
              splits: dict[int, str] | None = None, literal_strings: bool = True) -> Path:
    """A run folder under ``root`` (and ``root/split_manifest.json`` when ``splits`` is given)."""
    folder = root / name
    folder.mkdir(parents=True)
    write_gz(folder / "trajectories.jsonl.gz", "".join(json.dumps(t) + "\n" for t in trajs))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    write_gz(folder / "probes.csv.gz", buf.getvalue())
    if events is not None:
        lines = []
        for pid, probes in events.items():
            value: Any = repr(probes) if literal_strings else probes
            lines.append(json.dumps({"problem_id": pid, "dataset": "math500", "probes": value}) + "\n")
        write_gz(folder / "events.jsonl.gz", "".join(lines))
    if deer is not None:
        lines = []
        for pid, trials in deer.items():
            value = [repr(t) for t in trials] if literal_strings else trials
            lines.append(json.dumps({"problem_id": pid, "dataset": "math500", "trials": value}) + "\n")
        write_gz(folder / "deer.jsonl.gz", "".join(lines))
    if splits is not None:
        manifest = {"assignments": [{"benchmark": "math500", "dataset_index": pid, "split": s} for pid, s in splits.items()]}
        (root / "split_manifest.json").write_text(json.dumps(manifest))
    return folder


def write_boxed_run(root: Path, n: int) -> Path:
    """A run of ``n`` problems whose first box (early in the reasoning) already holds the final, right
    answer, and whose every probe gives it: a table where exiting at the first box saves without harm."""
    trajs, rows = [], []
    for pid in range(n):
        answer = str(pid % 7)
        t = traj(pid, answer, 640, answer)
        t["full_text"] = "<think>" + "x" * 300 + f" \\boxed{{{answer}}} " + "y" * 1500 + f"</think> \\boxed{{{answer}}}"
        trajs.append(t)
        rows += probe_rows(pid, [answer] * 9)
    return write_run(root, trajs, rows)


def event(pos: int, answer: str, certain: bool = True, out_tokens: int = 5) -> dict[str, Any]:
    return {"token_position": pos, "probe_answer": answer, "is_certain": certain, "probe_out_tokens": out_tokens,
            "trigger_types": ["reflection_transition"]}


def trial(pos: int, answer: str, confidence: float, out_tokens: int = 7) -> dict[str, Any]:
    return {"token_position": pos, "trial_answer": answer, "confidence": confidence, "trial_out_tokens": out_tokens,
            "logprobs": [{"logprob": -0.01, "token": answer}]}
