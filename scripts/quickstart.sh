#!/usr/bin/env bash
# README command 1: install, prepare the demo model, train the quickstart SFTJob on this CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# The quickstart manifest points here (model.source).
.venv/bin/sftjob demo-model "$HOME/.cache/sftjob/demo-model"
.venv/bin/sftjob validate examples/quickstart.yaml
exec .venv/bin/sftjob run examples/quickstart.yaml "$@"
