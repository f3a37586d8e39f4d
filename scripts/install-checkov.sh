#!/usr/bin/env bash
# Install the checkov security scanner into its own venv (.venv-checkov): checkov pins an
# old boto3 that must not meet the project's. tests/test_checkov.py scans the chart and the
# rendered training Jobs with it; without it those tests are skipped with this command.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${SFTJOB_CHECKOV_VERSION:-3.3.30}
if [ -x .venv-checkov/bin/checkov ] && [ "$(.venv-checkov/bin/checkov --version 2>/dev/null)" = "$version" ]; then
  exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${PYTHON:-python3}" -m venv .venv-checkov && .venv-checkov/bin/python -m pip install -q "checkov==$version"; } >"$log" 2>&1; then
  echo "install-checkov.sh: installing checkov $version failed:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
