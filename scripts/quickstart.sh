#!/usr/bin/env bash
# Install certaindex (embedded engine and proxy included) into .venv, replay certaindex on recorded traces
# of a real reasoning model, then solve a GSM8K test question live on the tiny embedded model with early
# exit and compare against full reasoning. Extra arguments go to `certaindex solve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv embedded
# 1. First: certaindex's early exit replayed on recorded traces of a real reasoning model
#    (DeepSeek-R1-Distill-Qwen-7B, 50 MATH500 problems shipped in the package): no model runs.
echo "== 1/2 Replay on recorded traces of a real reasoning model (DeepSeek-R1-Distill-Qwen-7B) =="
.venv/bin/certaindex demo
# Live run: a mechanism demo on a tiny model. GSM8K test problem 34 (gold answer 23) on the embedded
# SmolLM2-135M, a weak reasoner that often answers wrong, loops, or finishes early: it shows the probes
# and the early exit working live, not what they save on a real reasoning model. When early exit costs
# more than full reasoning here, `solve` says why (the probes are paid tokens; short reasoning leaves
# nothing for them to cut). tests/test_quickstart.py runs this question and checks the accounting.
# The tiny model reasons about 100 tokens, and the profile an unknown model gets (conservative) probes
# every 512: it would never probe. The demo probes at a grain that fits: Dynasor's rule, a probe every
# 16 tokens, 2 agreeing in a row to stop.
QUESTION="Siobhan has 2 fewer jewels than Aaron. Aaron has 5 more jewels than half of Raymond's jewels. If Raymond has 40 jewels, how many jewels does Siobhan have?"
EXPECTED=23
PROBE_FLAGS="--probe-interval 16 --k 2"
echo
echo "== 2/2 Live mechanism demo on SmolLM2-135M (a tiny model, on this CPU) =="
echo "It shows probing and early exit happening; its answer is often wrong and its saving can be"
echo "negative on such short reasoning. What early exit saves on a real reasoning model is measured"
echo "on recorded traces: step 1 above, and benchmarks/README.md."
echo "It probes every 16 reasoning tokens and stops when 2 probes in a row agree ($PROBE_FLAGS):"
echo "the tiny model reasons about 100 tokens, shorter than the 512 tokens between the probes of the"
echo "profile it would otherwise get, which would never probe here."
echo
# shellcheck disable=SC2086  # PROBE_FLAGS is several words
exec .venv/bin/certaindex solve "$QUESTION" --expected "$EXPECTED" --compare $PROBE_FLAGS "$@"
