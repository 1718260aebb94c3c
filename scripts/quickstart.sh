#!/usr/bin/env bash
# Install certaindex with the embedded engine into .venv, then solve a GSM8K test question with
# early exit and compare against full reasoning. Extra arguments go to `certaindex solve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv embedded
# 1. First: certaindex's early exit replayed on recorded traces of a real reasoning model
#    (DeepSeek-R1-Distill-Qwen-7B, 50 MATH500 problems shipped in the package): no model runs.
echo "== 1/2 Replay on recorded traces of a real reasoning model (DeepSeek-R1-Distill-Qwen-7B) =="
.venv/bin/certaindex demo
echo
echo "== 2/2 Mechanism demo: a live early-exit solve on a tiny model (SmolLM2-135M, embedded) =="
echo "   (a 135M model reasons poorly: this shows the probes and the early exit at work, not accuracy)"
# GSM8K test problem 34 (gold answer 23). The embedded 135M model is a weak reasoner: the point here
# is the early exit and the tokens it saves; --expected prints whether the answer is right.
# tests/test_quickstart.py runs this question and checks that an answer comes back.
QUESTION="Siobhan has 2 fewer jewels than Aaron. Aaron has 5 more jewels than half of Raymond's jewels. If Raymond has 40 jewels, how many jewels does Siobhan have?"
EXPECTED=23
exec .venv/bin/certaindex solve "$QUESTION" --expected "$EXPECTED" --compare "$@"
