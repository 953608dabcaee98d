#!/usr/bin/env bash
# One job: set up, then run densetune's main job on the embedded default model and data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/densetune quickstart "$@"
