"""Does a LoRA training learn? The demo character's drawings, a LoRA trained on them with the
project's trainer, and the identity score of what the generation path draws with it.

The learning tests and benchmarks/bench_toy_world.py measure with this, so both judge the same
thing: the kohya-format file the trainer saves, loaded back by `DiffusersGenerator` (what
ComfyUI would load), scored by `identity_similarity` in the toy identity model's space against
the drawings it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from lora_pipeline.evaluation.scores import identity_similarity
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest, LoraSpec
from lora_pipeline.toy_world.models import TOY_IDENTITY, TOY_SD
from lora_pipeline.toy_world.world import draw_figure, parse_figure, samples
from lora_pipeline.training.trainer import TrainingConfig, TrainingExample, train_lora
from lora_pipeline.vision.reference import ReferenceIdentifier

TRIGGER = "aiko"
DESCRIPTION = "teal hair, yellow raincoat, red boots"
CAPTION = f"{TRIGGER}, {DESCRIPTION}"
SEEDS = (1, 2, 3, 4)
DRAWINGS = 12
# The identity a working LoRA of her reaches and the base model does not (base about 0.27, a
# 150-step LoRA about 0.45 on the shipped models): the threshold the learning tests gate on.
GATE_MIN_IDENTITY = 0.4
# The LoRA settings of the learning tests (the run length is given in steps).
TRAINING = {"rank": 8, "alpha": 8.0, "learning_rate": 1e-2, "batch_size": 4}
# The run length at which a LoRA of her passes the gate: the learning tests' and the demo's.
GATE_STEPS = 150


def request(seed: int, prompt: str = CAPTION) -> GenerationRequest:
    """How the demo draws her: 64 px, 20 Euler steps, CFG 5."""
    return GenerationRequest(prompt=prompt, seed=seed, steps=20, cfg=5.0, width=64, height=64)


class LearningProbe:
    """Her drawings in `folder`, the toy base model and the identity model."""

    def __init__(self, folder: Path, base_model: Path = TOY_SD) -> None:
        figure = parse_figure(DESCRIPTION)
        assert figure is not None  # DESCRIPTION names a figure of the world
        self.folder = Path(folder)
        self.base_model = Path(base_model)
        self.references: list[Image.Image] = []
        self.examples: list[TrainingExample] = []
        for index, (_, seed) in enumerate(samples([figure], DRAWINGS, seed=3)):
            image = draw_figure(figure, seed)
            path = self.folder / f"{TRIGGER}-{index:02d}.png"
            image.save(path)
            self.references.append(image)
            self.examples.append(TrainingExample(path, CAPTION))
        self.embedder = ReferenceIdentifier(str(TOY_IDENTITY), lambda _slug: [], device="cpu")
        self.generator = DiffusersGenerator(str(self.base_model), device="cpu")

    def images(self, lora: LoraSpec | None, seeds: Sequence[int] = SEEDS) -> list[Image.Image]:
        return [self.generator.generate(request(seed), lora) for seed in seeds]

    def identity(self, lora: LoraSpec | None, seeds: Sequence[int] = SEEDS) -> float:
        """Mean over the seeds' images of the cosine to the nearest of her drawings."""
        return identity_similarity(self.embedder, self.images(lora, seeds), self.references)

    def train(self, name: str, steps: int, base_model: Path | None = None) -> Path:
        """A LoRA of `steps` steps trained by the project's trainer; its kohya file."""
        config = TrainingConfig(
            base_model=str(base_model or self.base_model),
            max_steps=steps,
            resolution=64,
            seed=0,
            device="cpu",
            mixed_precision="no",
            trigger_word=TRIGGER,
            **TRAINING,
        )
        output = self.folder / name / f"{TRIGGER}.safetensors"
        return train_lora(config, self.examples, output).path
