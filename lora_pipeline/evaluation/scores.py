"""Scores of an eval grid's images, and the gate that turns them into a verdict.

- `identity_similarity`: is the character recognisable? The mean, over generated images, of the
  best cosine similarity to the approved reference images, in the embedding space of reference
  matching (`vision.reference.ReferenceIdentifier.embed`). -1 to 1.
- `clip_score`: does the image follow its prompt? The standard CLIP score, 100 × max(cos(image,
  prompt), 0) averaged over the pairs, 0 to 100 (about 30 for a good match with ViT-L/14).
- `quality_score`: is the image broken? Black or flat decodes, near-uniform colour, clipping,
  extreme blur and tiny sizes, each a named problem; 0 (broken) to 1.
- `gate_verdict` compares the scores with a project's `GateThresholds`; `choose_best_epoch`
  picks the saved epoch to release when the trainer saved several.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from lora_pipeline.config import torch_device
from lora_pipeline.errors import PipelineError, first_line
from lora_pipeline.media.phash import sharpness
from lora_pipeline.registry.commands import PROJECT_SETTINGS
from lora_pipeline.vision.model_cache import ModelCache


class ScoreError(PipelineError, ValueError):
    """Scores asked of inputs they cannot be computed from, or invalid gate settings."""


class Embedder(Protocol):
    """Anything that embeds images, one row per image (ReferenceIdentifier is one)."""

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...


# ---------------------------------------------------------------------------- identity


def identity_similarity(
    embedder: Embedder, generated: Sequence[Image.Image], references: Sequence[Image.Image]
) -> float:
    """Mean over `generated` of the highest cosine similarity to any of `references`.

    The nearest reference counts, as in reference matching: a character drawn in one pose only
    has to look like the approved images of that pose.
    """
    if not generated:
        raise ScoreError("identity similarity needs at least one generated image")
    if not references:
        raise ScoreError("identity similarity needs at least one approved reference image")
    count = len(generated)
    vectors = embedder.embed([*generated, *references])
    own = getattr(embedder, "similarities", None)
    if callable(own):
        # A CCIP-style model has its own metric (1 − its difference), what the field gates on.
        rows = np.asarray(vectors)
        if rows.ndim != 2 or rows.shape[0] != count + len(references):
            raise ScoreError(
                f"the embedder returned {rows.shape} for {count + len(references)} images"
            )
        similarities = np.asarray(own(rows[:count], rows[count:]), dtype=np.float64)
        return float(similarities.max(axis=1).mean())
    vectors = _unit_rows(vectors, count + len(references))
    similarities = vectors[:count] @ vectors[count:].T
    return float(similarities.max(axis=1).mean())


def _unit_rows(vectors: np.ndarray, expected_rows: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != expected_rows or vectors.shape[1] == 0:
        raise ScoreError(
            f"the embedder returned an array of shape {vectors.shape} for {expected_rows} images"
        )
    # ReferenceIdentifier already normalises; another embedder may not, and cosine needs it.
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------- CLIP score

CLIP_BATCH_SIZE = 16


def _from_pretrained(model_id: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, CLIPModel

    try:
        processor = AutoProcessor.from_pretrained(model_id)
        model = CLIPModel.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise ScoreError(f"cannot load the CLIP model {model_id!r}: {first_line(exc)}") from exc
    return model.to(device).eval(), processor


CLIP_MODELS: ModelCache[tuple[Any, Any]] = ModelCache(_from_pretrained)


def release_models() -> None:
    """Forget the loaded CLIP models, so their memory can be freed."""
    CLIP_MODELS.clear()


def clip_score(
    model_path_or_id: str | Path,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    device: str = "cpu",
) -> float:
    """The CLIP score of (image, prompt) pairs: 100 × max(cos, 0), averaged (0 to 100).

    Prompts longer than the text tower's positions are truncated, as CLIP itself would read them.
    """
    import torch

    if not images:
        raise ScoreError("a CLIP score needs at least one image")
    if len(images) != len(prompts):
        raise ScoreError(f"a CLIP score pairs images and prompts: {len(images)} ≠ {len(prompts)}")
    model, processor = CLIP_MODELS.get(str(model_path_or_id), torch_device(device))
    max_length = model.config.text_config.max_position_embeddings
    scores = []
    for start in range(0, len(images), CLIP_BATCH_SIZE):
        batch = slice(start, start + CLIP_BATCH_SIZE)
        inputs = processor(
            text=list(prompts[batch]),
            images=[image.convert("RGB") for image in images[batch]],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )
        with torch.inference_mode():
            out = model(**{k: v.to(model.device) for k, v in inputs.items()})
        # image_embeds and text_embeds are L2-normalised: their row-wise product is the cosine.
        cosine = (out.image_embeds * out.text_embeds).sum(dim=-1).float().cpu().numpy()
        scores.append(100.0 * np.maximum(cosine, 0.0))
    return float(np.concatenate(scores).mean())


# ---------------------------------------------------------------------------- quality

# Thresholds on 8-bit greyscale values unless said otherwise. A decode that went NaN comes out
# all black (or one flat colour): almost no variation at all.
FLAT_STD = 2.0
# A flat image this dark is "black" rather than "flat".
BLACK_MEAN = 16.0
# Near-uniform: this share of the pixels lies within UNIFORM_DISTANCE of the median colour
# (max over RGB channels), i.e. a blank background with a speck of content.
UNIFORM_DISTANCE = 12
UNIFORM_SHARE = 0.95
# Clipped: more than this share of the pixels has a channel at exactly 0 or 255, the burnt,
# saturated colours of a too-high CFG or an overflowing decode. Pure white and pure black pixels
# do not count: an anime character on a plain white background is not clipped.
CLIPPED_SHARE = 0.5
# Extreme blur: variance of the Laplacian (media.phash.sharpness, at most 512 px) below this.
# Line art and renders score in the hundreds or more; only a smear scores this low.
MIN_SHARPNESS = 20.0
# A render smaller than this on its short side is a thumbnail or a failed decode.
MIN_SIDE = 32

# How much each problem costs; the score is the product of (1 - penalty), so one fatal problem
# gives 0 and two moderate ones 0.25.
QUALITY_PENALTIES: dict[str, float] = {
    "black": 1.0,
    "flat": 1.0,
    "near_uniform": 0.75,
    "clipped": 0.5,
    "blurry": 0.5,
    "too_small": 0.5,
}


@dataclass(frozen=True)
class QualityReport:
    score: float
    problems: tuple[str, ...] = field(default_factory=tuple)


def quality_score(image: Image.Image) -> QualityReport:
    """A corruption heuristic: 1 when none of QUALITY_PENALTIES' problems is found, less per one."""
    problems = _quality_problems(image)
    score = math.prod(1.0 - QUALITY_PENALTIES[problem] for problem in problems)
    return QualityReport(score=float(score), problems=tuple(problems))


def _quality_problems(image: Image.Image) -> list[str]:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    problems = [] if min(image.size) >= MIN_SIDE else ["too_small"]
    if grey.std() < FLAT_STD:
        # Nothing else is measurable on a flat image (it is trivially uniform and "blurry").
        return [*problems, "black" if grey.mean() < BLACK_MEAN else "flat"]
    median = np.median(rgb.reshape(-1, 3), axis=0)
    near = (np.abs(rgb - median).max(axis=-1) <= UNIFORM_DISTANCE).mean()
    if near >= UNIFORM_SHARE:
        problems.append("near_uniform")
    if _clipped_share(rgb) > CLIPPED_SHARE:
        problems.append("clipped")
    if sharpness(image) < MIN_SHARPNESS:
        problems.append("blurry")
    return problems


def _clipped_share(rgb: np.ndarray) -> float:
    extreme = (rgb == 0) | (rgb == 255)
    grey_extreme = extreme.all(axis=-1) & (rgb.min(axis=-1) == rgb.max(axis=-1))
    return float((extreme.any(axis=-1) & ~grey_extreme).mean())


# ---------------------------------------------------------------------------- gate

DEFAULT_MIN_QUALITY = 0.5
# Below this mean pixel change between the no-LoRA and full-strength columns, the LoRA does
# nothing visible (evaluation.grid.lora_effect).
DEFAULT_MIN_LORA_EFFECT = 0.002

# Score name -> its threshold field; thresholds are inclusive (a score equal to it passes).
GATED_SCORES = {
    "identity": "min_identity",
    "clip_score": "min_clip_score",
    "quality": "min_quality",
    "lora_effect": "min_lora_effect",
}
_THRESHOLD_RANGES = {
    "min_identity": (-1.0, 1.0),
    "min_clip_score": (0.0, 100.0),
    "min_quality": (0.0, 1.0),
    "min_lora_effect": (0.0, 1.0),
}
# The other keys of a project's settings: from_settings takes the whole dict and leaves these to
# the grid and the model card.
_OTHER_PROJECT_SETTINGS = frozenset(PROJECT_SETTINGS) - set(_THRESHOLD_RANGES)


@dataclass(frozen=True)
class GateThresholds:
    """The least score that passes the gate; None: that score does not gate."""

    min_identity: float | None = None
    min_clip_score: float | None = None
    min_quality: float = DEFAULT_MIN_QUALITY
    min_lora_effect: float = DEFAULT_MIN_LORA_EFFECT

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> GateThresholds:
        """The thresholds of a project's settings dict; absent or None keys keep the defaults."""
        unknown = sorted(set(settings) - set(_THRESHOLD_RANGES) - _OTHER_PROJECT_SETTINGS)
        if unknown:
            raise ScoreError(
                f"unknown gate setting {', '.join(map(str, unknown))}: "
                f"use {', '.join(_THRESHOLD_RANGES)}"
            )
        values = {
            name: _threshold(name, settings[name])
            for name in _THRESHOLD_RANGES
            if settings.get(name) is not None
        }
        return cls(**values)

    def as_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _threshold(name: str, value: object) -> float:
    low, high = _THRESHOLD_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScoreError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
    if not low <= value <= high:  # NaN fails this too
        raise ScoreError(f"{name} must be from {low:g} to {high:g}, not {value!r}")
    return float(value)


# The scores that say whether the LoRA draws *the character* (identity) following its prompts
# (CLIP). Quality and LoRA effect only say that something changed and nothing broke: a gate
# with neither of these measured cannot tell a good LoRA from a bad one.
FIDELITY_SCORES = ("identity", "clip_score")


def not_measured(scores: Mapping[str, float | None]) -> list[str]:
    """The gated scores that have no value (no model configured, or NaN)."""
    return [name for name in GATED_SCORES if not _is_measured(scores.get(name))]


def _is_measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def gate_verdict(
    scores: Mapping[str, float | None], thresholds: GateThresholds
) -> tuple[str, list[str]]:
    """("pass", []), ("fail", reasons) or ("unverified", reasons).

    - fail: a measured score is below its threshold (the reasons also name what was not
      measured);
    - unverified: nothing failed, but a score the project gates on was not measured, or neither
      identity nor CLIP score was (then nothing says the LoRA draws the character, and a gate
      that cannot fail must not say pass);
    - pass: every gated score was measured and reached its threshold.

    A score whose threshold is None does not gate; other keys of `scores` are ignored.
    """
    failed, unmeasured = [], []
    for name, threshold_name in GATED_SCORES.items():
        threshold = getattr(thresholds, threshold_name)
        if threshold is None:
            continue
        value = scores.get(name)
        if not _is_measured(value):
            unmeasured.append(f"{name} not measured")
        elif value < threshold:
            failed.append(f"{name} {value:.4g} < {threshold:g}")
    if not any(_is_measured(scores.get(name)) for name in FIDELITY_SCORES):
        ungated = [n for n in FIDELITY_SCORES if f"{n} not measured" not in unmeasured]
        if ungated:
            unmeasured.append(
                f"{' and '.join(ungated)} not measured: nothing says it draws the character"
            )
    if failed:
        return "fail", failed + unmeasured
    return ("unverified" if unmeasured else "pass"), unmeasured


def choose_best_epoch(
    per_epoch: Mapping[int, Mapping[str, float | None]], thresholds: GateThresholds
) -> int:
    """The epoch to release, by this order (each a tie-break of the one before):

    1. epochs that pass the gate before those that fail it;
    2. the highest identity similarity (recognisable is what a character LoRA is for);
    3. the highest CLIP score (it still follows prompts, i.e. it is not overfitted);
    4. the highest LoRA effect;
    5. the later epoch (it trained on more steps).

    A score that was not measured ranks below every measured one.
    """
    if not per_epoch:
        raise ScoreError("choosing the best epoch needs the scores of at least one epoch")

    def rank(epoch: int) -> tuple[bool, float, float, float, int]:
        scores = per_epoch[epoch]
        passed = gate_verdict(scores, thresholds)[0] == "pass"
        measured = [_measured(scores.get(n)) for n in ("identity", "clip_score", "lora_effect")]
        return (passed, *measured, epoch)

    return max(per_epoch, key=rank)


def _measured(value: float | None) -> float:
    return float(value) if _is_measured(value) else -math.inf
