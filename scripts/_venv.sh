# Sourced by the scripts: create .venv with a Python >= 3.10 and install the package with extras.
ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "error: certaindex needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2
    exit 2
  }
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  # llama-cpp-python is compiled from source on first install (a few minutes on 2 cores).
  # (This machine's pip configuration warns about absent local indexes; those lines are dropped.)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2> >(grep -v "^WARNING: Location" >&2) >/dev/null
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]" 2> >(grep -v "^WARNING: Location" >&2)
}
