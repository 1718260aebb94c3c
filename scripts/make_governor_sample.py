"""Build the sample of real trajectories shipped in the package (src/certaindex/data/governor_sample/).

The first 50 DEV-split MATH500 problems (by problem_id) of DeepSeek-R1-Distill-Qwen-7B, seed 42,
copied line for line from the Governor development traces (MIT, Hao AI Lab), with their grid
probes, event probes and DEER trials, a split manifest of just those problems, the licence, a
provenance README and a grade cache of their answers (so the demo needs no grading).

    python scripts/make_governor_sample.py [GOVERNOR_DIR]
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "r1-distill-qwen-7b__math500__seed_42"
N = 50


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "traces" / "governor"
    if not (src / RUN).is_dir():
        src = Path("/work/shared/traces/governor")
    manifest = json.loads((src / "split_manifest.json").read_text())
    dev = sorted(int(a["dataset_index"]) for a in manifest["assignments"] if a["benchmark"] == "math500" and a["split"] == "dev")
    recorded = {json.loads(line)["problem_id"] for line in gzip.open(src / RUN / "trajectories.jsonl.gz", "rt")}
    keep = set([p for p in dev if p in recorded][:N])
    out = ROOT / "src" / "certaindex" / "data" / "governor_sample"
    if out.exists():
        shutil.rmtree(out)
    (out / RUN).mkdir(parents=True)
    for name in ("trajectories.jsonl.gz", "events.jsonl.gz", "deer.jsonl.gz"):
        lines = [line for line in gzip.open(src / RUN / name, "rt", encoding="utf-8") if json.loads(line)["problem_id"] in keep]
        with gzip.GzipFile(out / RUN / name, "wb", mtime=0) as fh:
            fh.write("".join(lines).encode())
    rows = gzip.open(src / RUN / "probes.csv.gz", "rt", encoding="utf-8").read().splitlines(keepends=True)
    kept = [rows[0]] + [r for r in rows[1:] if int(r.split(",", 1)[0]) in keep]
    with gzip.GzipFile(out / RUN / "probes.csv.gz", "wb", mtime=0) as fh:
        fh.write("".join(kept).encode())
    for name in ("main__run_manifest.json", "dense_simple32__probe_manifest.json"):
        shutil.copy(src / RUN / name, out / RUN / name)
    sample_manifest = {k: v for k, v in manifest.items() if k != "assignments"}
    sample_manifest["assignments"] = [a for a in manifest["assignments"]
                                      if a["benchmark"] == "math500" and int(a["dataset_index"]) in keep]
    sample_manifest["note"] = "certaindex sample: only the assignments of the problems in this sample"
    (out / "split_manifest.json").write_text(json.dumps(sample_manifest, indent=1) + "\n")
    shutil.copy(src / "LICENSE", out / "LICENSE")
    (out / "README.md").write_text(README.format(n=len(keep), ids=", ".join(map(str, sorted(keep)))))

    from certaindex.evaluation.governor import grading_inputs, with_final_answers
    from certaindex.evaluation.grading import GradeCache
    from certaindex.traces.governor import read_governor

    trajs = with_final_answers([t for r in read_governor(out) for t in r.trajectories])
    cache = GradeCache(out / "grades.json")
    cache.grade(*grading_inputs(trajs))
    cache.save()
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{len(trajs)} trajectories, {total / 1e6:.2f} MB in {out}")
    return 0


README = """# A sample of real reasoning traces (shipped with certaindex)

{n} trajectories of **DeepSeek-R1-Distill-Qwen-7B** on MATH500, one per problem, sampling seed 42
(vLLM, temperature 0.6, top_p 0.95, budget 16,384 tokens), each probed for its answer every 64
reasoning tokens with the suffix `**Final Answer**\\n\\n\\[ \\boxed{{` (greedy, at most 32 tokens),
plus event probes (`events.jsonl.gz`) and DEER trial answers at "Wait" points (`deer.jsonl.gz`).
`certaindex demo` and `certaindex evaluate --sample` replay early-exit policies on them: the probes
were taken on the frozen trajectory, so the replay is exact.

- Problems: the first {n} problems (by MATH500 index) of the **dev** split of `split_manifest.json`:
  {ids}.
- Source: the Governor project (`Antony-zdh/Governor`, a fork of `hao-ai-lab/Dynasor`), commit
  `6a22a59cd704c498c04ffa47229decca56d6a5a2`, `benchmark/FalseConsensus/results/`, as redistributed
  in the project's shared development traces. Records are unchanged copies (lines of the original
  files); only the selection of problems differs.
- Licence: MIT, copyright (c) 2025 Hao AI Lab; see `LICENSE` beside this file.
- `grades.json`: certaindex's grades of these answers (its answer equivalence), so the demo needs no
  grading; it is rebuilt automatically if the equivalence changes.
- Built by `python scripts/make_governor_sample.py`.
"""

if __name__ == "__main__":
    sys.exit(main())
