"""Buckets, crops, epoch plans and caption shuffling, as kohya prepares training data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_pipeline.training.data import (
    TrainingDataError,
    TrainingExample,
    batches_per_epoch,
    bucket_resolutions,
    epoch_batches,
    load_pixels,
    place_examples,
    shuffle_caption,
    tag_frequency,
)


def test_buckets_are_kohyas_for_sd15() -> None:
    buckets = bucket_resolutions(512, 64)
    assert (512, 512) in buckets
    assert (384, 640) in buckets and (640, 384) in buckets
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert min(min(b) for b in buckets) == 256 and max(max(b) for b in buckets) == 1024
    assert buckets == sorted(buckets)


def _image(folder: Path, name: str, size: tuple[int, int]) -> TrainingExample:
    path = folder / name
    Image.new("RGB", size, "white").save(path)
    return TrainingExample(path, name)


def test_each_image_goes_to_the_bucket_of_its_aspect_ratio(tmp_path: Path) -> None:
    examples = [
        _image(tmp_path, "square.png", (700, 700)),
        _image(tmp_path, "tall.png", (600, 1000)),
        _image(tmp_path, "wide.png", (1000, 600)),
    ]
    square, tall, wide = place_examples(examples, 512, enable_bucket=True)
    assert square.bucket == (512, 512)
    assert tall.bucket[1] > tall.bucket[0] and abs(tall.bucket[0] / tall.bucket[1] - 0.6) < 0.05
    assert wide.bucket == tall.bucket[::-1]
    assert tall.original_size == (1000, 600)  # (height, width), as SDXL's time ids want it
    no_buckets = place_examples(examples, 512, enable_bucket=False)
    assert {s.bucket for s in no_buckets} == {(512, 512)}
    pixels = load_pixels(examples[tall.index].image_path, tall.bucket)
    assert pixels.shape == (3, tall.bucket[1], tall.bucket[0])
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0


def test_epoch_plan_is_fixed_by_seed_and_epoch_and_never_mixes_buckets(tmp_path: Path) -> None:
    examples = [_image(tmp_path, f"s{i}.png", (64, 64)) for i in range(5)]
    examples += [_image(tmp_path, f"w{i}.png", (128, 64)) for i in range(3)]
    samples = place_examples(examples, 64, enable_bucket=True)
    plan = epoch_batches(samples, 2, seed=1, epoch=1)
    assert plan == epoch_batches(samples, 2, seed=1, epoch=1)
    assert plan != epoch_batches(samples, 2, seed=1, epoch=2)
    assert len(plan) == batches_per_epoch(samples, 2) == 3 + 2
    assert sorted(i for batch in plan for i in batch) == list(range(8))
    for batch in plan:
        assert len({samples[i].bucket for i in batch}) == 1


def test_shuffle_keeps_the_first_tokens_and_every_tag() -> None:
    caption = "zkchar, red hair, blue eyes, smiling, outdoors"
    generator = torch.Generator().manual_seed(0)
    shuffled = [shuffle_caption(caption, 1, generator) for _ in range(20)]
    assert all(s.startswith("zkchar, ") for s in shuffled)
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)
    assert len(set(shuffled)) > 1
    assert tag_frequency([caption, "zkchar, smiling"]) == {
        "zkchar": 2,
        "red hair": 1,
        "blue eyes": 1,
        "smiling": 2,
        "outdoors": 1,
    }


def test_unreadable_image_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(TrainingDataError, match="cannot read training image .*broken.png"):
        place_examples([TrainingExample(broken, "x")], 64, enable_bucket=True)
