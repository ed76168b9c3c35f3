"""Identification by reference matching: a frame shows a character when its image embedding
is close (cosine similarity) to one of that character's approved images.

Embeddings come from a CLIP-style vision model with a projection
(`CLIPVisionModelWithProjection` + its image processor, from a folder or hub id). Every
approval adds a reference, so identification gets better as the dataset grows. Reference
embeddings are cached by the image's sha256, in memory and on disk, so each approved image is
embedded once, ever.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lora_pipeline.config import torch_device
from lora_pipeline.errors import first_line
from lora_pipeline.files import atomic_write_bytes
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identification,
    IdentifierError,
    short_name,
)
from lora_pipeline.vision.model_cache import ModelCache

DEFAULT_THRESHOLD = 0.85
BATCH_SIZE = 32


@dataclass(frozen=True)
class ReferenceImage:
    sha256: str
    path: Path


# slug -> the character's approved images.
ReferenceSource = Callable[[str], Sequence[ReferenceImage]]


def _from_pretrained(model_id: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    try:
        processor = AutoImageProcessor.from_pretrained(model_id)
        # The explicit class: AutoModel would load the tower without its projection.
        model = CLIPVisionModelWithProjection.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        raise IdentifierError(
            f"cannot load the vision model {model_id!r}: {first_line(exc)}"
        ) from exc
    return model.to(device).eval(), processor


MODELS: ModelCache[tuple[Any, Any]] = ModelCache(_from_pretrained)


def release_models() -> None:
    MODELS.clear()


class ReferenceIdentifier:
    """Recognises the candidates whose approved images look like the frame."""

    # The answer depends on the approved set at the time: it must not be reused for the same
    # picture in another source later.
    answers_are_stable = False

    def __init__(
        self,
        model: str,
        references: ReferenceSource,
        threshold: float = DEFAULT_THRESHOLD,
        cache_dir: Path | None = None,
        device: str = "auto",
        embedder: Any = None,
    ) -> None:
        """`embedder` (an object with `embed` and `similarities`, e.g. vision.ccip's) replaces
        the CLIP model; `model` then only names the embedding cache."""
        if not -1 <= threshold <= 1:
            raise ValueError(f"a cosine threshold is within -1..1, not {threshold}")
        self.model_id = model
        self.references = references
        self.threshold = threshold
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self.embedder = embedder
        self.name = embedder.name if embedder is not None else short_name("reference", model)
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised embeddings, one row per image."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        if self.embedder is not None:
            return self.embedder.embed(images)
        import torch

        model, processor = MODELS.get(self.model_id, torch_device(self.device))
        rows = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = [image.convert("RGB") for image in images[start : start + BATCH_SIZE]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                embeds = model(pixel_values=pixels.to(model.device, model.dtype)).image_embeds
            rows.append(embeds.float().cpu().numpy())
        vectors = np.concatenate(rows)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]:
        if not images:
            return []
        scores, missing = self.scores(images, candidates)
        if candidates and not scores:
            # Answering "no one" would mark the frames classified for good; let them wait for
            # the first approvals instead.
            raise IdentifierError(
                "reference matching has no approved image of any candidate character yet; "
                "approve some images first"
            )
        return [self._verdict(i, scores, missing) for i in range(len(images))]

    def scores(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Per candidate with approved images, each image's similarity to its nearest one; and
        the candidates without approved images."""
        frames = self.embed(images)
        scores: dict[str, np.ndarray] = {}
        missing = []
        for candidate in candidates:
            refs = self._reference_embeddings(candidate.slug)
            if refs is None:
                missing.append(candidate.slug)
                continue
            # Nearest reference: a character drawn in many poses matches the closest one.
            scores[candidate.slug] = self.similarities(frames, refs).max(axis=1)
        return scores, missing

    def similarities(self, queries: np.ndarray, references: np.ndarray) -> np.ndarray:
        """The embedder's own similarity (CCIP's metrics model), else cosine of unit rows."""
        if self.embedder is not None:
            return self.embedder.similarities(queries, references)
        return queries @ references.T

    def _verdict(
        self, row: int, scores: dict[str, np.ndarray], missing: list[str]
    ) -> Identification:
        found = frozenset(slug for slug, s in scores.items() if s[row] >= self.threshold)
        parts = [f"{slug} {s[row]:.3f}" for slug, s in sorted(scores.items())]
        measure = "reference cosine" if self.embedder is None else f"{self.name} similarity"
        answer = f"{measure} (threshold {self.threshold}): " + (", ".join(parts) or "-")
        if missing:
            answer += f"; no approved images yet: {', '.join(sorted(missing))}"
        record = match_record(self.name, self.threshold, scores, row)
        if missing:
            record["no_approved_images"] = sorted(missing)
        return Identification(found, answer, record)

    def _reference_embeddings(self, slug: str) -> np.ndarray | None:
        references = list(self.references(slug))
        vectors = []
        todo: list[tuple[ReferenceImage, Image.Image]] = []
        for reference in references:
            cached = self._cached(reference.sha256)
            if cached is not None:
                vectors.append(cached)
                continue
            try:
                todo.append((reference, load_image(reference.path)))
            except InvalidImageError:
                continue  # a damaged approved file is a dataset problem, reported there
        if todo:
            for (reference, _), vector in zip(todo, self.embed([i for _, i in todo]), strict=True):
                self._store(reference.sha256, vector)
                vectors.append(vector)
        return np.stack(vectors) if vectors else None

    def _cache_path(self, sha256: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / _model_key(self.model_id) / sha256[:2] / f"{sha256}.npy"

    def _cached(self, sha256: str) -> np.ndarray | None:
        if sha256 in self._cache:
            return self._cache[sha256]
        path = self._cache_path(sha256)
        if path is None or not path.is_file():
            return None
        try:
            vector = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        self._cache[sha256] = vector
        return vector

    def _store(self, sha256: str, vector: np.ndarray) -> None:
        self._cache[sha256] = vector
        path = self._cache_path(sha256)
        if path is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, vector.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())


def _model_key(model_id: str) -> str:
    """A folder name per model: embeddings of two models never mix."""
    return hashlib.sha256(model_id.encode()).hexdigest()[:16]


def match_record(
    matcher: str, threshold: float, scores: dict[str, np.ndarray], row: int
) -> dict[str, Any]:
    """Reference matching's part of an identification record: each candidate's best score
    for image `row` against the threshold a match needs."""
    return {
        "method": "reference",
        "matcher": matcher,
        "threshold": float(threshold),
        "scores": {slug: round(float(s[row]), 4) for slug, s in sorted(scores.items())},
    }
