"""The script that made the shipped toy-world models still runs (a few steps of each stage) and
what it saves loads through the real paths: generation, reference matching, the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest
from lora_pipeline.toy_world.models import TOY_IDENTITY, TOY_SD
from lora_pipeline.toy_world.train import HELD_OUT, TrainSteps, base_figures, train_toy_world
from lora_pipeline.toy_world.world import all_figures, draw_figure, parse_figure
from lora_pipeline.vision.reference import ReferenceIdentifier

pytestmark = pytest.mark.slow

FEW = TrainSteps(vae=2, unet=2, identity=2, batch_size=4, drawings_per_figure=1)


def test_a_few_steps_of_each_stage_save_models_the_pipeline_loads(tmp_path: Path) -> None:
    out = train_toy_world(tmp_path / "models", FEW, log=lambda _: None)
    vae_config = json.loads((out / "sd" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != 0.18215  # measured on the figures' latents
    image = DiffusersGenerator(str(out / "sd"), device="cpu").generate(
        GenerationRequest(prompt="teal hair", steps=2, width=64, height=64, seed=1)
    )
    assert image.size == (64, 64)
    vectors = ReferenceIdentifier(str(out / "identity"), lambda _: [], device="cpu").embed(
        [image, image]
    )
    assert vectors.shape[0] == 2
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_the_shipped_models_are_the_scripts_and_small() -> None:
    assert (TOY_SD / "model_index.json").is_file()
    assert (TOY_IDENTITY / "config.json").is_file()
    size = sum(p.stat().st_size for p in TOY_SD.parent.rglob("*") if p.is_file())
    assert size < 8 * 2**20


def test_the_identity_model_tells_the_figures_apart() -> None:
    """Each drawing is nearer to another drawing of its figure than to any other figure's."""
    figures = all_figures()
    embedder = ReferenceIdentifier(str(TOY_IDENTITY), lambda _: [], device="cpu")
    first = embedder.embed([draw_figure(f, 1000 + i) for i, f in enumerate(figures)])
    second = embedder.embed([draw_figure(f, 2000 + i) for i, f in enumerate(figures)])
    nearest = (first @ second.T).argmax(axis=1)
    assert (nearest == np.arange(len(figures))).mean() >= 0.9


def test_the_demo_figure_is_held_out_of_the_base_models_training() -> None:
    aiko = parse_figure("aiko, teal hair, yellow raincoat, red boots")
    assert aiko in HELD_OUT
    assert aiko not in base_figures()
    assert len(base_figures()) == len(all_figures()) - len(HELD_OUT)
