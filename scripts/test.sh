#!/usr/bin/env bash
# Install if needed, then run the whole test suite (lint first: ruff is part of the contract).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lora_pipeline lora_pipeline_tests benchmarks
# The layers (pyproject.toml [tool.importlinter]); no cache folder left in the checkout.
.venv/bin/lint-imports --no-cache --no-logo
exec .venv/bin/python -m pytest -q "$@"
