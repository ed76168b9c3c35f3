from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from lora_pipeline.dataset.service import DatasetRef
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.training.kohya_format import read_kohya_lora
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


@pytest.fixture
def studio(tmp_path: Path) -> tuple[Registry, DataRoot, DatasetRef, str]:
    """A registry with character aiko (trigger zkaiko) and a kohya-layout shot split of 5
    images (close ×3, mid ×2), as shot_splits leaves it."""
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(session, "demo", "aiko", "Aiko", trigger_word="zkaiko", steps=3)
    root = DataRoot(tmp_path / "data")
    dataset = DatasetRef("aiko", "d" * 64, "datasets/aiko", 5, True)
    split = root.dir("kohya", "aiko", "d" * 64)
    for shot, count in (("close", 3), ("mid", 2)):
        folder = split / shot
        folder.mkdir()
        for index in range(count):
            Image.new("RGB", (64, 64), "red").save(folder / f"aiko_{shot}_{index}.png")
            (folder / f"aiko_{shot}_{index}.txt").write_text(f"zkaiko, {shot} shot")
    return registry, root, dataset, root.relative(split)


class FakeComfyUI(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        FakeComfyUI.requests.append((self.path, body))
        # ComfyUI v0.8.0 answers 500 to /free without a body
        status = 200 if self.path == "/free" and body else 500
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def comfyui() -> Iterator[str]:
    FakeComfyUI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfyUI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


# Resume tests: 4 images in 2 buckets at batch 4 make 2 steps per epoch, 3 epochs, 6 steps.
RESUME_STEPS = 6


def resume_config(tiny_sd: Path, state_dir: Path, **changes: object) -> TrainingConfig:
    settings = dict(
        base_model=str(tiny_sd),
        rank=4,
        alpha=4.0,
        learning_rate=1e-3,
        epochs=3,
        batch_size=4,
        resolution=32,
        seed=11,
        device="cpu",
        save_every_n_epochs=1,
        shuffle_caption=True,
        noise_offset=0.05,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        state_dir=str(state_dir),
    )
    return TrainingConfig(**(settings | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def uninterrupted(
    tiny_sd: Path, examples: list[TrainingExample], tmp_path_factory: pytest.TempPathFactory
) -> TrainingResult:
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = resume_config(tiny_sd, folder / "state")
    return train_lora(config, examples, folder / "lora.safetensors")


def assert_same_lora(result: TrainingResult, reference: TrainingResult) -> None:
    assert result.steps == reference.steps == RESUME_STEPS
    assert result.history == list(range(1, RESUME_STEPS + 1)), "each step trained exactly once"
    assert result.losses == reference.losses
    tensors, _ = read_kohya_lora(result.path)
    expected, _ = read_kohya_lora(reference.path)
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
