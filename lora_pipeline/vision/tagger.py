"""A WD14-style image tagger: an ONNX model and its `selected_tags.csv`.

Model I/O (the SmilingWolf WD14 taggers): input `[batch, H, W, 3]` float32, BGR, 0–255, the image
padded to a square on white and resized to H × W (448 for the released models); output
`[batch, N]` sigmoid scores, one per row of the CSV. The CSV has a header
`tag_id,name,category,count`; category 0 is a general tag, 4 a character, 9 a rating.
A general tag is kept from 0.35, a character tag from 0.85 (the usual WD14 thresholds).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lora_pipeline.vision.onnx_models import ModelLoadError, fixed_dim, open_session

GENERAL_THRESHOLD = 0.35
CHARACTER_THRESHOLD = 0.85
DEFAULT_INPUT_SIZE = 448
DEFAULT_BATCH_SIZE = 8
TAGS_FILENAME = "selected_tags.csv"
CATEGORY_GENERAL, CATEGORY_CHARACTER, CATEGORY_RATING = 0, 4, 9
# Scores land in JSON files; a fixed precision keeps reruns byte-identical.
_DECIMALS = 4


@dataclass(frozen=True)
class TagInfo:
    name: str
    category: int


@dataclass(frozen=True)
class TagScores:
    """The tags of one image above their thresholds, best first; the most likely rating."""

    general: tuple[tuple[str, float], ...]
    character: tuple[tuple[str, float], ...]
    rating: str | None

    @property
    def names(self) -> list[str]:
        """Character tags, then general tags, each best first."""
        return [name for name, _ in self.character] + [name for name, _ in self.general]


def load_tag_csv(path: Path) -> list[TagInfo]:
    """The tags of a WD14 `selected_tags.csv`, in model output order."""
    path = Path(path).expanduser()
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise ModelLoadError(f"tag list not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ModelLoadError(f"cannot read tag list {path}: {error}") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ModelLoadError(f"tag list {path} needs a header with 'name' and 'category' columns")
    tags = []
    for line, row in enumerate(rows, start=2):
        name = (row.get("name") or "").strip()
        try:
            category = int(row["category"])
        except (TypeError, ValueError):
            raise ModelLoadError(f"{path} line {line}: category must be an integer") from None
        if not name:
            raise ModelLoadError(f"{path} line {line}: empty tag name")
        tags.append(TagInfo(name, category))
    return tags


class OnnxTagger:
    """Tags images with a WD14-style ONNX model; `tag()` takes a batch of PIL images."""

    def __init__(
        self,
        model_path: Path | str,
        tags_csv: Path | str | None = None,
        *,
        general_threshold: float = GENERAL_THRESHOLD,
        character_threshold: float = CHARACTER_THRESHOLD,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str = "auto",
    ) -> None:
        for label, value in (("general", general_threshold), ("character", character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ModelLoadError(f"{label} tag threshold must lie between 0 and 1: {value}")
        if batch_size < 1:
            raise ModelLoadError(f"tagger batch size must be at least 1, got {batch_size}")
        self.path = Path(model_path).expanduser()
        csv_path = Path(tags_csv).expanduser() if tags_csv else self.path.parent / TAGS_FILENAME
        self.tags = load_tag_csv(csv_path)
        self.session = open_session(self.path, "tagger", device)
        self.name = f"wd14:{self.path.name}"
        self.general_threshold = general_threshold
        self.character_threshold = character_threshold
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or fixed_dim(shape, 3) != 3:
            raise ModelLoadError(f"tagger {self.path.name} must take [batch, H, W, 3]: {shape}")
        self.input_name = model_input.name
        self.height = fixed_dim(shape, 1) or DEFAULT_INPUT_SIZE
        self.width = fixed_dim(shape, 2) or DEFAULT_INPUT_SIZE
        fixed_batch = fixed_dim(shape, 0)
        if fixed_batch not in (None, 1):
            raise ModelLoadError(f"tagger {self.path.name} has a fixed batch of {fixed_batch}")
        # A model exported with batch 1 cannot take more.
        self.batch_size = 1 if fixed_batch == 1 else batch_size
        outputs = self.session.get_outputs()[0].shape
        if fixed_dim(outputs, 1) not in (None, len(self.tags)):
            raise ModelLoadError(
                f"tagger {self.path.name} scores {outputs[1]} tags but {csv_path.name} lists "
                f"{len(self.tags)}"
            )

    def tag(self, images: Sequence[Image.Image]) -> list[TagScores]:
        results: list[TagScores] = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack(
                [self.prepare(image) for image in images[start : start + self.batch_size]]
            )
            (scores, *_) = self.session.run(None, {self.input_name: batch})
            scores = np.asarray(scores, dtype=np.float32)
            if scores.shape != (len(batch), len(self.tags)):
                raise ModelLoadError(
                    f"tagger {self.path.name} returned scores of shape {scores.shape}, expected "
                    f"{(len(batch), len(self.tags))}"
                )
            results.extend(self._select(row) for row in scores)
        return results

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Pad to a white square, resize, and turn into BGR float32 0–255 (H, W, 3)."""
        rgb = image.convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        if square.size != (self.width, self.height):
            square = square.resize((self.width, self.height), Image.BICUBIC)
        return np.asarray(square, dtype=np.float32)[:, :, ::-1]

    def _select(self, scores: np.ndarray) -> TagScores:
        general: list[tuple[str, float]] = []
        character: list[tuple[str, float]] = []
        best_rating: tuple[float, str] | None = None
        for info, raw in zip(self.tags, scores.tolist(), strict=True):
            score = round(float(raw), _DECIMALS)
            if info.category == CATEGORY_RATING:
                if best_rating is None or score > best_rating[0]:
                    best_rating = (score, info.name)
            elif info.category == CATEGORY_CHARACTER and score >= self.character_threshold:
                character.append((info.name, score))
            elif info.category == CATEGORY_GENERAL and score >= self.general_threshold:
                general.append((info.name, score))
        # Best first; equal scores keep the CSV order, so the result never depends on chance.
        general.sort(key=lambda item: -item[1])
        character.sort(key=lambda item: -item[1])
        return TagScores(tuple(general), tuple(character), best_rating[1] if best_rating else None)
