"""Combined identification: reference matching first, the vision-language model otherwise.

Matching against a character's approved images (CLIP or CCIP embeddings) is cheap and, once the
character has approved images, more reliable than a VLM's free text; but it knows nothing of a
character without approvals and is unsure below its threshold. So each image is matched first;
when its best match reaches the threshold that answer stands, otherwise the VLM is asked. The
answer recorded names both: the match scores, and the VLM's answer when it was asked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from lora_pipeline.vision.identification import CharacterProfile, Identification, Identifier
from lora_pipeline.vision.reference import ReferenceIdentifier, match_record


class CombinedIdentifier:
    """`reference` decides when confident (a score ≥ `threshold`), else `fallback` does."""

    # The reference half depends on the approved set at the time (see ReferenceIdentifier).
    answers_are_stable = False

    def __init__(
        self, reference: ReferenceIdentifier, fallback: Identifier, threshold: float
    ) -> None:
        if not -1 <= threshold <= 1:
            raise ValueError(f"a similarity threshold is within -1..1, not {threshold}")
        self.reference = reference
        self.fallback = fallback
        self.threshold = threshold
        self.name = f"{reference.name}+{fallback.name}"[:64]

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]:
        if not images:
            return []
        scores, _ = self.reference.scores(images, candidates) if candidates else ({}, [])
        confident = [self._match(scores, row) for row in range(len(images))]
        unsure = [row for row, found in enumerate(confident) if not found]
        asked = self.fallback.identify([images[row] for row in unsure], candidates)
        answers = dict(zip(unsure, asked, strict=True))
        return [
            self._verdict(scores, row, confident[row], answers.get(row))
            for row in range(len(images))
        ]

    def _match(self, scores: dict[str, np.ndarray], row: int) -> frozenset[str]:
        return frozenset(slug for slug, s in scores.items() if s[row] >= self.threshold)

    def _verdict(
        self,
        scores: dict[str, np.ndarray],
        row: int,
        matched: frozenset[str],
        asked: Identification | None,
    ) -> Identification:
        parts = ", ".join(f"{slug} {s[row]:.3f}" for slug, s in sorted(scores.items()))
        matching = (
            f"{self.reference.name} (threshold {self.threshold}): {parts or 'no approved images'}"
        )
        record = match_record(self.reference.name, self.threshold, scores, row)
        if asked is None:
            return Identification(matched, f"matched by reference: {matching}", record)
        # The VLM decided; the match scores say why it was asked.
        record.update(method="vlm", vlm=self.fallback.name, vlm_answer=asked.raw_answer)
        return Identification(
            asked.slugs,
            f"reference unsure, asked {self.fallback.name}: {asked.raw_answer} | {matching}",
            record,
        )

    def close(self) -> None:
        close = getattr(self.fallback, "close", None)
        if callable(close):
            close()
