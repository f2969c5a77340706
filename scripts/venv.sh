# Sourced by demo.sh and test.sh: create .venv (Python 3.11) and install the project from its
# own pyproject.toml. $1: extras, e.g. "[dev]".
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${1:-}"
