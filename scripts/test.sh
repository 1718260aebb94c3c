#!/usr/bin/env bash
# Install certaindex with the embedded engine and the test tools into .venv, then run the test suite.
# Extra arguments go to pytest (e.g. -m "not model" to skip the tests that load the model).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv embedded,test
exec .venv/bin/python -m pytest -q "$@"
