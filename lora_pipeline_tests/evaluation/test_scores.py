"""Scores of eval images on tiny models, the quality heuristic, the gate and the best epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lora_pipeline.evaluation import scores
from lora_pipeline.evaluation.scores import (
    DEFAULT_MIN_LORA_EFFECT,
    GateThresholds,
    ScoreError,
    choose_best_epoch,
    clip_score,
    gate_verdict,
    identity_similarity,
    not_measured,
    quality_score,
)
from lora_pipeline.vision.reference import ReferenceIdentifier
from lora_pipeline.vision.tiny import build_tiny_clip, build_tiny_clip_vision


@pytest.fixture(scope="module")
def tiny_clip_vision(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip_vision(tmp_path_factory.getbasetemp() / "models" / "tiny-clip")


@pytest.fixture(scope="module")
def tiny_clip_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield build_tiny_clip(tmp_path_factory.getbasetemp() / "models" / "tiny-clip-full")
    scores.release_models()


def picture(seed: int, size: int = 64, noise: int = 20) -> Image.Image:
    """Coloured blocks with pixel noise: structured, sharp, neither flat nor clipped."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 226, (4, 4, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(blocks).resize((size, size), Image.Resampling.NEAREST))
    noisy = pixels.astype(np.int16) + rng.integers(-noise, noise + 1, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


class ThumbnailEmbedder:
    """A real embedding by pixel statistics: the 4×4 colour thumbnail, centred on mid-grey."""

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        thumbs = [np.asarray(i.convert("RGB").resize((4, 4), Image.Resampling.BOX)) for i in images]
        return np.stack([t.astype(np.float32).ravel() - 127.5 for t in thumbs])


# ---------------------------------------------------------------------------- identity


def test_identity_with_the_tiny_reference_model_is_deterministic(tiny_clip_vision: Path) -> None:
    embedder = ReferenceIdentifier(str(tiny_clip_vision), lambda slug: [], device="cpu")
    reference, unrelated = picture(1), picture(3)
    same = identity_similarity(embedder, [reference], [reference])
    other = identity_similarity(embedder, [unrelated], [reference])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < same - 1e-4, "the tiny model tells these pictures apart"
    assert identity_similarity(embedder, [unrelated], [reference]) == other
    mixed = identity_similarity(embedder, [reference, unrelated], [reference])
    assert mixed == pytest.approx((same + other) / 2, abs=1e-5)


def test_identity_ranks_a_likeness_above_an_unrelated_picture() -> None:
    embedder = ThumbnailEmbedder()
    reference = picture(1)
    likeness = picture(1, noise=40).filter(ImageFilter.GaussianBlur(1))
    unrelated = picture(2)
    close = identity_similarity(embedder, [likeness], [reference])
    far = identity_similarity(embedder, [unrelated], [reference])
    assert far < close < 1.0
    # The nearest reference counts: another approved picture does not dilute the likeness.
    both = identity_similarity(embedder, [likeness], [unrelated, reference])
    assert both == pytest.approx(close, abs=1e-12)
    assert identity_similarity(embedder, [likeness], [reference]) == close


def test_identity_rejects_empty_inputs_and_bad_embeddings() -> None:
    embedder = ThumbnailEmbedder()
    with pytest.raises(ScoreError, match="generated image"):
        identity_similarity(embedder, [], [picture(1)])
    with pytest.raises(ScoreError, match="reference image"):
        identity_similarity(embedder, [picture(1)], [])

    class Broken:
        def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
            return np.zeros((1, 8))

    with pytest.raises(ScoreError, match=r"shape \(1, 8\) for 2 images"):
        identity_similarity(Broken(), [picture(1)], [picture(2)])


# ---------------------------------------------------------------------------- CLIP score


def test_clip_score_is_in_range_and_deterministic(tiny_clip_full: Path) -> None:
    images = [picture(1), picture(2), picture(3, size=48)]
    prompts = ["aiko, portrait", "aiko, full body, standing", "aiko, smiling"]
    first = clip_score(tiny_clip_full, images, prompts)
    assert 0.0 <= first <= 100.0
    assert clip_score(str(tiny_clip_full), images, prompts, device="cpu") == first
    # Each image is scored against its own prompt, not against the others'.
    swapped = clip_score(tiny_clip_full, images, prompts[::-1])
    assert swapped != first
    scores.release_models()
    assert clip_score(tiny_clip_full, images, prompts) == pytest.approx(first, abs=1e-4)


def test_clip_score_truncates_long_prompts(tiny_clip_full: Path) -> None:
    long = "aiko, teal hair, yellow raincoat, " * 10  # far past the 77 positions
    score = clip_score(tiny_clip_full, [picture(1)], [long])
    assert 0.0 <= score <= 100.0
    # What lies past the positions is cut off, so it cannot change the score.
    longer = clip_score(tiny_clip_full, [picture(1)], [long + "green school uniform " * 5])
    assert longer == pytest.approx(score, abs=1e-4)


def test_clip_score_errors(tiny_clip_full: Path, tmp_path: Path) -> None:
    with pytest.raises(ScoreError, match="at least one image"):
        clip_score(tiny_clip_full, [], [])
    with pytest.raises(ScoreError, match="2 ≠ 1"):
        clip_score(tiny_clip_full, [picture(1), picture(2)], ["one prompt"])
    with pytest.raises(ScoreError, match="cannot load the CLIP model"):
        clip_score(tmp_path / "no-model-here", [picture(1)], ["aiko"])


# ---------------------------------------------------------------------------- quality


def burnt(image: Image.Image) -> Image.Image:
    """Contrast pushed far past the range, as a too-high CFG does."""
    pixels = np.asarray(image, dtype=np.float32)
    return Image.fromarray(np.clip((pixels - 128) * 6 + 128, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("name", "image", "problem"),
    [
        ("black", Image.new("RGB", (64, 64)), "black"),
        ("flat grey", Image.new("RGB", (64, 64), (128, 128, 128)), "flat"),
        ("clipped", burnt(picture(1)), "clipped"),
        ("blurred", picture(1).filter(ImageFilter.GaussianBlur(3)), "blurry"),
        ("tiny", picture(1, size=16), "too_small"),
    ],
)
def test_quality_flags_broken_images(name: str, image: Image.Image, problem: str) -> None:
    report = quality_score(image)
    assert report.problems == (problem,), name
    assert report.score < 1.0
    assert quality_score(image) == report


def test_quality_passes_normal_images_and_scores_problems() -> None:
    for image in (picture(1), picture(2, size=32), picture(3).convert("L")):
        assert quality_score(image).problems == ()
        assert quality_score(image).score == 1.0
    # A character on a pure white background is not "clipped".
    pixels = np.full((64, 64, 3), 255, dtype=np.uint8)
    pixels[8:56, 20:44] = np.asarray(picture(4))[8:56, 20:44]
    assert quality_score(Image.fromarray(pixels)).problems == ()
    # A speck of content on a blank background is near-uniform.
    speck = np.full((64, 64, 3), 200, dtype=np.uint8)
    speck[30:34, 30:34] = 0
    assert "near_uniform" in quality_score(Image.fromarray(speck)).problems
    assert quality_score(Image.new("RGB", (64, 64))).score == 0.0
    assert quality_score(picture(1, size=16).filter(ImageFilter.GaussianBlur(3))).score == 0.25


# ---------------------------------------------------------------------------- gate


def test_thresholds_from_settings() -> None:
    assert GateThresholds.from_settings({}) == GateThresholds()
    assert GateThresholds().min_lora_effect == DEFAULT_MIN_LORA_EFFECT == 0.002
    assert GateThresholds().min_identity is None and GateThresholds().min_clip_score is None
    project_settings = {
        "eval_prompts": ["portrait"],
        "eval_seeds": [1, 2],
        "licence": "CC-BY-4.0",
        "min_identity": 0.7,
        "min_clip_score": 22,
        "min_quality": None,  # None keeps the default
        "min_lora_effect": 0.01,
    }
    assert GateThresholds.from_settings(project_settings) == GateThresholds(
        min_identity=0.7, min_clip_score=22.0, min_lora_effect=0.01
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"min_identiy": 0.5}, "unknown gate setting min_identiy: use min_identity, "),
        ({"min_identity": "high"}, "min_identity must be a number from -1 to 1, not 'high'"),
        ({"min_quality": True}, "min_quality must be a number"),
        ({"min_quality": 1.5}, "min_quality must be from 0 to 1, not 1.5"),
        ({"min_clip_score": -1}, "min_clip_score must be from 0 to 100"),
        ({"min_lora_effect": float("nan")}, "min_lora_effect must be from 0 to 1, not nan"),
    ],
)
def test_bad_gate_settings_are_explained(settings: dict, message: str) -> None:
    with pytest.raises(ScoreError, match=message):
        GateThresholds.from_settings(settings)


def test_gate_verdict_and_reasons() -> None:
    good = {"identity": 0.8, "clip_score": 25.0, "quality": 0.9, "lora_effect": 0.01}
    strict = GateThresholds(min_identity=0.7, min_clip_score=20.0)
    assert gate_verdict(good, strict) == ("pass", [])
    assert gate_verdict({**good, "identity": 0.7}, strict) == ("pass", []), "inclusive"
    verdict, reasons = gate_verdict({**good, "identity": 0.5, "lora_effect": 0.001}, strict)
    assert verdict == "fail"
    assert reasons == ["identity 0.5 < 0.7", "lora_effect 0.001 < 0.002"]
    # No CLIP model configured: the score is not measured, which gates only with a threshold.
    unmeasured = {**good, "clip_score": None}
    assert gate_verdict(unmeasured, GateThresholds(min_identity=0.7)) == ("pass", [])
    # A gated score that was not measured leaves the verdict unverified: it neither passes nor
    # fails (a reviewer may override it, with a reason).
    assert gate_verdict(unmeasured, strict) == ("unverified", ["clip_score not measured"])
    assert gate_verdict({**good, "quality": float("nan")}, strict) == (
        "unverified",
        ["quality not measured"],
    )
    # A measured failure wins, and the reasons still say what was not measured.
    low = {**unmeasured, "identity": 0.5}
    assert gate_verdict(low, strict) == ("fail", ["identity 0.5 < 0.7", "clip_score not measured"])


def test_the_gate_never_passes_when_nothing_measured_the_character() -> None:
    # Quality and LoRA effect measured, identity and CLIP not (no models configured): before,
    # "pass", a gate that could not fail.
    blind = {"identity": None, "clip_score": None, "quality": 0.9, "lora_effect": 0.01}
    verdict, reasons = gate_verdict(blind, GateThresholds())
    assert verdict == "unverified"
    assert reasons == ["identity and clip_score not measured: nothing says it draws the character"]
    assert not_measured(blind) == ["identity", "clip_score"]
    assert gate_verdict({"quality": 0.9}, GateThresholds())[0] == "unverified"
    # Either fidelity score measured is enough when the project gates on nothing else.
    assert gate_verdict({**blind, "clip_score": 28.0}, GateThresholds()) == ("pass", [])
    # A failing measured score still fails.
    assert gate_verdict({**blind, "quality": 0.1}, GateThresholds())[0] == "fail"


def test_best_epoch_ordering() -> None:
    gate = GateThresholds(min_identity=0.6)

    def epoch(identity: float | None, clip: float | None = 20.0, effect: float = 0.01) -> dict:
        return {"identity": identity, "clip_score": clip, "quality": 1.0, "lora_effect": effect}

    # A passing epoch beats a failing one with a higher identity (its lora_effect is too low).
    assert choose_best_epoch({1: epoch(0.9, effect=0.0), 2: epoch(0.65)}, gate) == 2
    # Among passing epochs, identity first ...
    assert choose_best_epoch({1: epoch(0.8), 2: epoch(0.7), 3: epoch(0.75)}, gate) == 1
    # ... then the CLIP score (unmeasured ranks last) ...
    assert choose_best_epoch({1: epoch(0.8, 25.0), 2: epoch(0.8, 24.0)}, gate) == 1
    assert choose_best_epoch({1: epoch(0.8, 1.0), 2: epoch(0.8, None)}, gate) == 1
    # ... then the LoRA effect ...
    assert choose_best_epoch({1: epoch(0.8, effect=0.02), 2: epoch(0.8, effect=0.01)}, gate) == 1
    # ... and a full tie goes to the later epoch, passing or not.
    assert choose_best_epoch({4: epoch(0.8), 2: epoch(0.8), 3: epoch(0.8)}, gate) == 4
    assert choose_best_epoch({1: epoch(0.1), 2: epoch(0.1)}, gate) == 2
    # When none passes, the best-scoring failure is still chosen.
    assert choose_best_epoch({1: epoch(0.5), 2: epoch(0.3), 3: epoch(None)}, gate) == 1
    with pytest.raises(ScoreError, match="at least one epoch"):
        choose_best_epoch({}, gate)
