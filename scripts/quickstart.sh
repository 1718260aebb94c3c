#!/usr/bin/env bash
# Install certaindex with the embedded engine into .venv, then solve a GSM8K test question with
# early exit and compare against full reasoning. Extra arguments go to `certaindex solve`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv embedded
# GSM8K test problem 19 (gold answer 6). The embedded 135M model is a weak reasoner: the point here is
# the early exit and the tokens it saves; --expected prints whether the answer is right.
QUESTION="Marissa is hiking a 12-mile trail. She took 1 hour to walk the first 4 miles, then another hour to walk the next two miles. If she wants her average speed to be 4 miles per hour, what speed (in miles per hour) does she need to walk the remaining distance?"
exec .venv/bin/certaindex solve "$QUESTION" --expected 6 --compare "$@"
