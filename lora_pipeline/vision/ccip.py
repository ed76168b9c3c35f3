"""A CCIP-style character-identity embedder: an ONNX model that maps an anime image to a feature
vector, and optionally the metrics model that turns features into pairwise differences.

This is how the field scores "is this the same character" (CyberHarem gates releases on it).
Model I/O, as the released CCIP models have it (and the tiny test models in `vision.tiny_onnx`):
- feature model: input `[N, 3, S, S]` float32 (S read from the model, 384 when dynamic), RGB
  resized to S × S (bilinear), scaled to 0–1, normalised with CLIP's mean and std; output
  `[N, D]` features (the first output).
- metrics model (optional): input `[N, D]` features, output `[N, N]` differences (0 = same
  character). Similarity is 1 − difference. Without it, similarity is the cosine of features.
Nothing is downloaded: both models load from local paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lora_pipeline.vision.onnx_models import ModelLoadError, fixed_dim, open_session

DEFAULT_SIZE = 384
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
BATCH_SIZE = 16
SPEC_PREFIX = "ccip:"


class CcipEmbedder:
    """Character features from a CCIP-style ONNX model; see the module docstring."""

    def __init__(
        self, model_path: Path | str, metrics_path: Path | str | None = None, device: str = "auto"
    ) -> None:
        self.path = Path(model_path).expanduser()
        self.session = open_session(self.path, "CCIP feature", device)
        self.metrics = (
            open_session(Path(metrics_path), "CCIP metrics", device) if metrics_path else None
        )
        self.name = f"ccip:{self.path.name}"[:64]
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or fixed_dim(shape, 1) != 3:
            raise ModelLoadError(f"CCIP model {self.path.name} must take [N, 3, S, S]: {shape}")
        self.input_name = model_input.name
        self.size = fixed_dim(shape, 2) or DEFAULT_SIZE
        # A model exported with batch 1 fixed is run one image at a time.
        self.batch = BATCH_SIZE if fixed_dim(shape, 0) is None else fixed_dim(shape, 0) or 1

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """One feature row per image (as the model gives them: the metrics model reads them)."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        rows = []
        for start in range(0, len(images), self.batch):
            tensor = np.stack([self._pixels(image) for image in images[start : start + self.batch]])
            (features, *_) = self.session.run(None, {self.input_name: tensor})
            rows.append(np.asarray(features, dtype=np.float32).reshape(len(tensor), -1))
        return np.concatenate(rows)

    def similarities(self, queries: np.ndarray, references: np.ndarray) -> np.ndarray:
        """`[len(queries), len(references)]`: 1 − the metrics model's difference, else cosine."""
        if self.metrics is None:
            return unit_rows(queries) @ unit_rows(references).T
        both = np.concatenate([queries, references]).astype(np.float32)
        name = self.metrics.get_inputs()[0].name
        (differences, *_) = self.metrics.run(None, {name: both})
        differences = np.asarray(differences, dtype=np.float32)
        if differences.shape != (len(both), len(both)):
            raise ModelLoadError(
                f"CCIP metrics model gave shape {differences.shape} for {len(both)} features"
            )
        return 1.0 - differences[: len(queries), len(queries) :]

    def _pixels(self, image: Image.Image) -> np.ndarray:
        rgb = image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
        unit = np.asarray(rgb, dtype=np.float32) / 255.0
        return ((unit - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).astype(np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def parse_ccip_spec(spec: str) -> tuple[str, str | None]:
    """`ccip:<features.onnx>[#<metrics.onnx>]` → the two paths."""
    text = spec.strip()
    if not text.startswith(SPEC_PREFIX):
        raise ValueError(f"not a CCIP model spec: {spec!r}")
    features, _, metrics = text[len(SPEC_PREFIX) :].partition("#")
    if not features.strip():
        raise ValueError(f"CCIP spec {spec!r} names no feature model: use ccip:<model.onnx>")
    return features.strip(), metrics.strip() or None


def load_ccip(spec: str, device: str = "auto") -> CcipEmbedder:
    features, metrics = parse_ccip_spec(spec)
    return CcipEmbedder(features, metrics, device=device)
