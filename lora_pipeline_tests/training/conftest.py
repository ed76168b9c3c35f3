from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lora_pipeline.training.trainer import (
    TrainingConfig,
    TrainingExample,
    TrainingProgress,
    TrainingResult,
    train_lora,
)

CAPTIONS = ["zkchar, red square", "zkchar, blue circle", "zkchar, green bar", "zkchar, red square"]
TRAINED_STEPS = 16


def write_examples(folder: Path) -> list[TrainingExample]:
    """Four drawn images of different shapes and sizes (non-square, to exercise the crop)."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for index, caption in enumerate(CAPTIONS):
        image = Image.new("RGB", (80 + 8 * index, 64), "white")
        draw = ImageDraw.Draw(image)
        colour = ("red", "blue", "green", "red")[index]
        draw.rectangle((10 + index, 10, 60, 50), fill=colour)
        path = folder / f"{index}.png"
        image.save(path)
        examples.append(TrainingExample(path, caption))
    return examples


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[TrainingExample]:
    return write_examples(tmp_path_factory.mktemp("training-images"))


@pytest.fixture(scope="session")
def trained(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, list[TrainingProgress]]:
    """A LoRA trained long and hard enough (lr 1e-3) to visibly change the tiny model."""
    progress: list[TrainingProgress] = []
    config = TrainingConfig(
        base_model=str(tiny_sd),
        rank=4,
        alpha=4.0,
        learning_rate=1e-3,
        max_steps=TRAINED_STEPS,
        batch_size=2,
        resolution=64,
        seed=7,
        device="cpu",
        trigger_word="zkchar",
        dataset_hash="d" * 64,
        title="zkchar-test",
    )
    output = tmp_path_factory.mktemp("trained") / "zkchar.safetensors"
    return train_lora(config, examples, output, on_progress=progress.append), progress
