#!/usr/bin/env bash
# Install certaindex with the embedded engine into .venv, then solve a GSM8K test question with
# early exit and compare against full reasoning. Extra arguments go to `certaindex solve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv embedded
QUESTION="A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?"
exec .venv/bin/certaindex solve "$QUESTION" --compare "$@"
