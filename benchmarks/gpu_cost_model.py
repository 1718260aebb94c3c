"""Fit the simulator's engine cost model on a GPU (run through the device tool).

No model weights and no serving engine can reach the device machines, so this times the work a
tuned engine's decode step does for a real architecture: every layer of Qwen2.5-7B's shape
(DeepSeek-R1-Distill-Qwen-7B's architecture) with random bf16 weights (the cost does not depend
on them) - fused QKV, grouped-query attention over a KV cache (PyTorch SDPA), output projection,
gated MLP, the LM head - replayed as one CUDA graph per (batch, context), as vLLM and SGLang do, so
Python and kernel-launch overhead are not counted. Prefill is the same stack over a whole prompt.
Norms, rotary embeddings and sampling are left out (a few percent). What the simulator needs is
the shape of the curve: fixed cost per step, cost per running request, cost per context token.

    PYTHONPATH=src python3 benchmarks/gpu_cost_model.py --out $OUT/cost-model-h100-qwen7b.json
    PYTHONPATH=src python3 benchmarks/gpu_cost_model.py --shape qwen2.5-32b --out $OUT/cost-model-h100-qwen32b.json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from certaindex.serving.costmodel import fit_cost_model  # noqa: E402

HEAD_DIM = 128
SHAPES = {  # hidden, layers, query heads, kv heads, MLP width, vocabulary
    "qwen2.5-7b": (3584, 28, 28, 4, 18944, 152064),  # DeepSeek-R1-Distill-Qwen-7B
    "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936),
    "llama3-8b": (4096, 32, 32, 8, 14336, 128256),  # DeepSeek-R1-Distill-Llama-8B
    "qwen3-8b": (4096, 36, 32, 8, 12288, 151936),  # Qwen3-8B
    "qwen2.5-32b": (5120, 64, 40, 8, 27648, 152064),  # DeepSeek-R1-Distill-Qwen-32B
}
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of the card it may use


class Stack:
    def __init__(self, shape: str) -> None:
        hidden, layers, heads, kv, inter, vocab = SHAPES[shape]
        self.hidden, self.heads, self.kv = hidden, heads, kv
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        scale = hidden ** -0.5
        self.layers = [
            (
                torch.randn(hidden, (heads + 2 * kv) * HEAD_DIM, **bf16) * scale,
                torch.randn(heads * HEAD_DIM, hidden, **bf16) * scale,
                torch.randn(hidden, 2 * inter, **bf16) * scale,
                torch.randn(inter, hidden, **bf16) * inter ** -0.5,
            )
            for _ in range(layers)
        ]
        self.lm_head = torch.randn(hidden, vocab, **bf16) * scale

    def kv_bytes_per_token(self) -> int:
        return len(self.layers) * 2 * self.kv * HEAD_DIM * 2  # K and V, bf16

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for layer in self.layers for w in layer) + self.lm_head.numel() * 2

    def forward(self, x: torch.Tensor, caches: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """x: (batch, tokens, hidden). With caches, attend over them (decode); else causal (prefill)."""
        b, t, _ = x.shape
        for i, (w_qkv, w_o, w_up, w_down) in enumerate(self.layers):
            qkv = x @ w_qkv
            q, k, v = qkv.split([self.heads * HEAD_DIM, self.kv * HEAD_DIM, self.kv * HEAD_DIM], dim=-1)
            q = q.view(b, t, self.heads, HEAD_DIM).transpose(1, 2)
            k = k.view(b, t, self.kv, HEAD_DIM).transpose(1, 2)
            v = v.view(b, t, self.kv, HEAD_DIM).transpose(1, 2)
            if caches is not None:
                cache_k, cache_v = caches[i]
                cache_k[:, :, -t:].copy_(k)  # the new tokens' slots (their positions are fixed in the graph)
                cache_v[:, :, -t:].copy_(v)
                k, v = cache_k, cache_v
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=caches is None, enable_gqa=True)
            x = x + attn.transpose(1, 2).reshape(b, t, -1) @ w_o
            gate, up = (x @ w_up).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ w_down
        return x[:, -1] @ self.lm_head


@torch.inference_mode()
def decode_step_s(stack: Stack, batch: int, context: int, replays: int = 20) -> float:
    caches = [
        (torch.randn(batch, stack.kv, context + 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
         torch.randn(batch, stack.kv, context + 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
        for _ in stack.layers
    ]
    x = torch.randn(batch, 1, stack.hidden, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            stack.forward(x, caches)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        stack.forward(x, caches)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    del graph, caches
    return start.elapsed_time(end) / 1e3 / replays


def fits(stack: Stack, tokens: int, headroom: float = 0.8) -> bool:
    """Whether a KV cache of ``tokens`` tokens fits in what the card has free (with headroom for
    activations and the graph's workspace)."""
    free, _total = torch.cuda.mem_get_info()
    return tokens * stack.kv_bytes_per_token() < headroom * free


@torch.inference_mode()
def suffix_prefill_s(stack: Stack, suffix: int, context: int) -> float:
    """A probe under automatic prefix caching: only its ``suffix`` new tokens are computed, each
    attending over the cached ``context`` (the prompt and the reasoning so far)."""
    caches = [
        (torch.randn(1, stack.kv, context + suffix, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
         torch.randn(1, stack.kv, context + suffix, HEAD_DIM, device="cuda", dtype=torch.bfloat16))
        for _ in stack.layers
    ]
    x = torch.randn(1, suffix, stack.hidden, device="cuda", dtype=torch.bfloat16)
    seconds = seconds_per_call(lambda: stack.forward(x, caches), reps=10)
    del caches
    return seconds


@torch.inference_mode()
def prefill_s(stack: Stack, tokens: int) -> float:
    x = torch.randn(1, tokens, stack.hidden, device="cuda", dtype=torch.bfloat16)
    return seconds_per_call(lambda: stack.forward(x, None), reps=5)


def seconds_per_call(call, reps: int) -> float:
    """One warm-up call, then the mean of ``reps`` calls timed with CUDA events."""
    call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    parser.add_argument("--batches", default="1,4,16,32,64,128")
    parser.add_argument("--contexts", default="256,1024,2048,4096,8192,16384")
    parser.add_argument("--suffix-tokens", type=int, default=25, help="probe suffix tokens (prefix-cached probes)")
    parser.add_argument("--max-batch", type=int, default=128, help="the batch the simulated engine decodes together")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    stack = Stack(args.shape)
    device = torch.cuda.get_device_name(0)
    steps = []
    for batch in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            if not fits(stack, batch * (context + 1)):
                print(f"decode batch {batch:3d} context {context:5d}: skipped (KV cache does not fit)", flush=True)
                continue
            seconds = decode_step_s(stack, batch, context)
            steps.append((batch, float(batch * context), seconds))
            print(f"decode batch {batch:3d} context {context:5d}: {seconds * 1e3:7.3f} ms/step", flush=True)
            torch.cuda.empty_cache()
    joins = []
    for tokens in (128, 512, 1024, 2048, 4096):
        seconds = prefill_s(stack, tokens)
        joins.append((tokens, seconds))
        print(f"prefill {tokens:5d} tokens: {seconds * 1e3:7.3f} ms", flush=True)
    suffixes = []
    for context in map(int, args.contexts.split(",")):
        if fits(stack, context + args.suffix_tokens):
            seconds = suffix_prefill_s(stack, args.suffix_tokens, context)
            suffixes.append((context, seconds))
            print(f"probe suffix {args.suffix_tokens} tokens over {context:5d} cached: {seconds * 1e3:7.3f} ms", flush=True)
            torch.cuda.empty_cache()
    _free, total = torch.cuda.mem_get_info()
    kv_capacity = int((GPU_MEMORY_UTILIZATION * total - stack.weight_bytes()) // stack.kv_bytes_per_token())
    print(f"KV capacity at {GPU_MEMORY_UTILIZATION:.0%} of the card: {kv_capacity} tokens "
          f"({stack.kv_bytes_per_token() / 1024:.0f} KiB per token, weights {stack.weight_bytes() / 2**30:.1f} GiB)")
    model_cost = fit_cost_model(
        steps, joins, max_batch=args.max_batch, prefix_cache="program", probe_suffix_tokens=args.suffix_tokens,
        meta={
            "engine": f"{args.shape}-shaped decoder stack, random bf16 weights, CUDA-graph decode steps, "
                      f"PyTorch {torch.__version__} SDPA (no serving engine or weights reach the device)",
            "machine": f"{device}, device tool ({platform.node()})",
            "command": " ".join(["python3", *sys.argv]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "steps": steps,
            "joins": joins,
            "probe_suffix_prefill": suffixes,  # (cached context tokens, seconds) of one prefix-cached probe suffix
            "kv_capacity_tokens": kv_capacity,  # KV tokens the card holds at vLLM's default memory share
            "kv_bytes_per_token": stack.kv_bytes_per_token(),
            "weight_bytes": stack.weight_bytes(),
        },
    )
    model_cost.save(args.out)
    print(f"fitted: a={model_cost.a * 1e3:.3f} ms, b={model_cost.b * 1e3:.4f} ms/request, "
          f"c={model_cost.c * 1e9:.3f} ns/context token, prefill {model_cost.prefill_s * 1e6:.2f} us/token, "
          f"request {model_cost.request_s * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
