"""Does probing on re-tokenized text differ from probing on the model's own token ids? (issue 11, item 5)

A probe sent as text (prompt + the reasoning streamed so far + the probe suffix, tokenized by the
server) is not always the sequence the model saw: re-tokenizing generated text can merge or split
tokens differently from how they were sampled. Servers that take token-id prompts (vLLM, SGLang)
let a probe see exactly the model's tokens. No vLLM or real weights run here, so this measures it
on the embedded llama.cpp model (SmolLM2-135M), where the generated ids are known: greedy reasoning
from the program's own prompt (``open_prompt``, the default system prompt), and at every probe point:

* reasoning ids: do ``tokenize(prompt + text so far)`` and ``prompt ids + generated ids`` differ?
* probe prompt: do the text probe's ids (``tokenize(prompt + text + suffix)``, what a server gets
  as text) and the id probe's (``prompt ids + generated ids + tokenize(suffix)``, what
  ``solve_cot`` sends with token ids) differ?
* probe answer: greedy probe on each, from an empty cache; do the answers read from them differ
  (``read_probe_answer``, compared as strings and by ``answers_equal``)? Control: probes whose two
  prompts are the same ids must give the same output.

    nice -n 10 .venv/bin/python benchmarks/token_id_probes.py --problems 20 --budget 256 --interval 32 \\
        --out benchmarks/results/token-id-probes/token-id-probes.txt
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.core.answers import answers_equal  # noqa: E402
from certaindex.core.datasets import load_dataset  # noqa: E402
from certaindex.core.prompting import (  # noqa: E402
    DEFAULT_PROBE_SUFFIX,
    DEFAULT_SYSTEM_PROMPT,
    PROBE_STOPS,
    read_probe_answer,
)
from certaindex.engines.embedded import EmbeddedEngine  # noqa: E402
from certaindex.programs.base import open_prompt  # noqa: E402


def reason(llama, prompt_ids: list[int], budget: int) -> list[int]:
    """Greedy reasoning from ``prompt_ids``: the generated token ids, up to ``budget`` or the end."""
    out: list[int] = []
    eos = llama.token_eos()
    for token in llama.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        if token == eos:
            break
        out.append(token)
        if len(out) >= budget:
            break
    return out


def probe(llama, prompt: str | list[int], max_tokens: int) -> tuple[str, str | None]:
    """A greedy probe on a text prompt (tokenized by llama.cpp, as a server would) or on token ids,
    from an empty cache: llama.cpp's output also depends on which prefix it had cached (a shorter
    evaluation batch rounds differently), which is not what is measured here."""
    llama.reset()
    out = llama.create_completion(prompt=prompt, max_tokens=max_tokens, temperature=0.0, top_k=0, min_p=0.0,
                                  repeat_penalty=1.0, stop=list(PROBE_STOPS))
    choice = out["choices"][0]
    hit_stop = choice.get("finish_reason") == "stop"
    return choice["text"], read_probe_answer(DEFAULT_PROBE_SUFFIX, choice["text"], hit_stop)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=20)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--probe-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the report here (and the per-probe rows next to it as .jsonl)")
    args = parser.parse_args()

    engine = EmbeddedEngine(n_threads=args.threads, n_ctx=2048)
    llama = engine._llama  # the ids path needs llama.cpp itself; benchmark only
    suffix_ids = llama.tokenize(DEFAULT_PROBE_SUFFIX.encode(), add_bos=False, special=False)  # as engine.tokenize
    rows: list[dict] = []
    start = time.perf_counter()
    for problem in load_dataset("gsm8k", limit=args.problems, offset=args.offset):
        _, prompt = await open_prompt(engine, problem.question, DEFAULT_SYSTEM_PROMPT)
        prompt_ids = llama.tokenize(prompt.encode(), add_bos=True, special=True)  # what the engine evaluates
        generated = reason(llama, prompt_ids, args.budget)
        for at in range(args.interval, len(generated) + 1, args.interval):
            # The streamed text: the pieces of the generated ids, joined (byte-level BPE: exact).
            text = llama.detokenize(generated[:at]).decode("utf-8", "ignore")
            exact = prompt_ids + generated[:at]
            retok = llama.tokenize((prompt + text).encode(), add_bos=True, special=True)
            text_probe = llama.tokenize((prompt + text + DEFAULT_PROBE_SUFFIX).encode(), add_bos=True, special=True)
            id_probe = exact + suffix_ids
            text_out, text_answer = probe(llama, prompt + text + DEFAULT_PROBE_SUFFIX, args.probe_tokens)
            id_out, id_answer = probe(llama, id_probe, args.probe_tokens)
            rows.append({
                "problem": problem.id, "at": at,
                "reasoning_ids_differ": retok != exact, "reasoning_first_diff": first_difference(retok, exact),
                "reasoning_len": [len(retok), len(exact)],
                "probe_ids_differ": text_probe != id_probe, "probe_first_diff": first_difference(text_probe, id_probe),
                "text_answer": text_answer, "id_answer": id_answer,
                "answers_differ": text_answer != id_answer,
                "answers_inequivalent": not (text_answer == id_answer or (
                    text_answer is not None and id_answer is not None and answers_equal(text_answer, id_answer))),
                "outputs_differ": text_out != id_out,
            })
    elapsed = time.perf_counter() - start
    await engine.aclose()

    n = len(rows)
    problems = sorted({r["problem"] for r in rows})

    def share(key: str) -> str:
        k = sum(1 for r in rows if r[key])
        return f"{k}/{n} ({100 * k / n:.1f}%)" if n else "0/0"

    def problems_with(key: str) -> str:
        k = len({r["problem"] for r in rows if r[key]})
        return f"{k}/{len(problems)}"

    lines = [
        "$ " + " ".join([Path(sys.executable).name, *sys.argv]),
        f"model {engine.model_path.name}, llama.cpp greedy, {len(problems)} GSM8K problems (offset {args.offset}), "
        f"budget {args.budget}, probe every {args.interval} tokens, probe {args.probe_tokens} tokens; "
        f"{platform.machine()} {platform.system()}, {args.threads} threads, {elapsed:.0f} s",
        f"probe points: {n}",
        f"reasoning re-tokenized != generated ids: {share('reasoning_ids_differ')} of points, "
        f"{problems_with('reasoning_ids_differ')} problems",
        f"probe prompt as text != as ids (reasoning ids + suffix ids): {share('probe_ids_differ')} of points, "
        f"{problems_with('probe_ids_differ')} problems",
        f"probe output text differs: {share('outputs_differ')} (where the prompts are the same ids: "
        f"{sum(1 for r in rows if r['outputs_differ'] and not r['probe_ids_differ'])}, the control: must be 0)",
        f"probe answer differs (as strings): {share('answers_differ')}, {problems_with('answers_differ')} problems",
        f"probe answer differs (answers_equal): {share('answers_inequivalent')}",
    ]
    firsts = [r["probe_first_diff"] for r in rows if r["probe_ids_differ"]]
    if firsts:
        lens = [r["reasoning_len"][1] for r in rows if r["probe_ids_differ"]]
        at_end = sum(1 for f, L in zip(firsts, lens) if f >= L - 1)
        lines.append(f"where the probe prompts first differ: at the reasoning/suffix boundary (last reasoning token "
                     f"or later) in {at_end}/{len(firsts)}, inside the reasoning in {len(firsts) - at_end}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report, encoding="utf-8")
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
