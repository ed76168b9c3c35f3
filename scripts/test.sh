#!/usr/bin/env bash
# Install if needed, then run the whole test suite (lint first: ruff is part of the contract).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check lora_pipeline lora_pipeline_tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
