#!/usr/bin/env bash
# One job: set up, lint, and run the whole test suite (CPU; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check densetune tests bench
.venv/bin/ruff format --check densetune tests bench
# a fixed property-test search (tests/conftest.py); plain `pytest` keeps drawing new inputs
HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m pytest -q "$@"
