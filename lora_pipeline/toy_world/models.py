"""Where the toy world's trained models ship, and their loaders for the rest of the code."""

from __future__ import annotations

from pathlib import Path

# Made by scripts/train_toy_world.py (lora_pipeline.toy_world.train), committed: training them
# takes about 20 minutes of CPU, which no test run should pay.
SHIPPED_MODELS = Path(__file__).parent / "models"
TOY_SD = SHIPPED_MODELS / "sd"
TOY_IDENTITY = SHIPPED_MODELS / "identity"
