"""Training data as kohya prepares it: aspect-ratio buckets, resized crops, shuffled captions.

Every image goes to the bucket (width × height, area at most resolution², sides multiples of the
bucket step) whose aspect ratio is closest to its own, is resized to cover the bucket and
centre-cropped, so a tall full-body shot is not cut to a square. A batch holds images of one
bucket. The order of an epoch depends only on the seed and the epoch number, which is what lets
a resumed run pick up in the middle of an epoch with the same batches.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lora_pipeline.errors import PipelineError


class TrainingDataError(PipelineError, ValueError):
    """An image or caption that cannot be used for training."""


@dataclass
class TrainingExample:
    image_path: Path
    caption: str


@dataclass(frozen=True)
class Sample:
    """One example placed in its bucket: the pixels to train on and SDXL's size conditioning."""

    index: int
    bucket: tuple[int, int]  # (width, height)
    original_size: tuple[int, int]  # (height, width), as SDXL's time ids want it
    crop_top_left: tuple[int, int]  # (top, left) in the resized image


def bucket_step_for(resolution: int) -> int:
    """kohya's 64 px steps; smaller steps for small test models (a multiple of 8 either way)."""
    return 64 if resolution >= 256 else max(8, resolution // 4 // 8 * 8)


def bucket_resolutions(resolution: int, step: int) -> list[tuple[int, int]]:
    """kohya's `make_bucket_resolutions`: sides from resolution/2 to 2×resolution, area ≤ res²."""
    max_area = resolution * resolution
    min_side, max_side = resolution // 2, resolution * 2
    side = int(math.sqrt(max_area) // step) * step
    buckets = {(side, side)}
    width = min_side
    while width <= max_side:
        height = min(max_side, int((max_area // width) // step) * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
        width += step
    return sorted(buckets)


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).size
    except (OSError, UnidentifiedImageError) as error:
        raise TrainingDataError(f"cannot read training image {path}: {error}") from error


def place_examples(
    examples: Sequence[TrainingExample], resolution: int, enable_bucket: bool
) -> list[Sample]:
    """Each example in its bucket (or in the square resolution×resolution without bucketing)."""
    buckets = bucket_resolutions(resolution, bucket_step_for(resolution)) if enable_bucket else []
    samples = []
    for index, example in enumerate(examples):
        width, height = image_size(Path(example.image_path))
        if buckets:
            ratio = width / height
            bucket = min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))
        else:
            bucket = (resolution, resolution)
        scale = max(bucket[0] / width, bucket[1] / height)
        resized = (round(width * scale), round(height * scale))
        crop = ((resized[1] - bucket[1]) // 2, (resized[0] - bucket[0]) // 2)
        samples.append(Sample(index, bucket, (height, width), crop))
    return samples


def load_pixels(path: Path, bucket: tuple[int, int]) -> torch.Tensor:
    """The image resized to cover `bucket`, centre-cropped, as 3×H×W in [-1, 1]."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError) as error:
        raise TrainingDataError(f"cannot read training image {path}: {error}") from error
    width, height = bucket
    image = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    pixels = pixels.view(height, width, 3).permute(2, 0, 1).float()
    return pixels / 127.5 - 1.0


def epoch_batches(
    samples: Sequence[Sample], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """The batches of an epoch (example indices), shuffled within buckets and in batch order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    for sample in samples:
        by_bucket[sample.bucket].append(sample.index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def batches_per_epoch(samples: Sequence[Sample], batch_size: int) -> int:
    sizes = Counter(sample.bucket for sample in samples)
    return sum(math.ceil(count / batch_size) for count in sizes.values())


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def shuffle_caption(caption: str, keep_tokens: int, generator: torch.Generator) -> str:
    """kohya's shuffle_caption: the first `keep_tokens` tags stay, the others are shuffled."""
    tags = split_tags(caption)
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return ", ".join(kept + [rest[i] for i in order])


def tag_frequency(captions: Sequence[str]) -> dict[str, int]:
    """How often each comma-separated tag occurs, as kohya records it."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(split_tags(caption))
    return dict(counts)
