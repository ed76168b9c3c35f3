"""Persons in a frame, each cropped on its own, and the three-stage crops of one person.

A frame showing two characters must not train either character's LoRA whole: each detected
person is cropped (with a margin) and identified alone. A crop that another person reaches into
is flagged *not solo*, the user guide's reject category, so a reviewer sees it at once. The
three-stage split (full body → upper body → head, as waifuc does it) turns one full-body person
into the mid and close shots a dataset may lack; it needs the head, from a head detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from lora_pipeline.vision.faces import FaceBox, FaceDetector

Box = tuple[int, int, int, int]
# Another person whose box lies this much (share of its area) inside a crop makes it not solo.
NOT_SOLO_SHARE = 0.1
# Upper body: from the top of the person down to this many head heights below the head's chin.
UPPER_BODY_HEADS = 2.0
STAGES = ("far", "mid", "close")


@dataclass(frozen=True)
class PersonCrop:
    """One detected person: its detection, the crop box (margin included, inside the frame),
    whether another person reaches into it, and its head when a head detector found one."""

    person: FaceBox
    box: Box
    not_solo: bool
    head: FaceBox | None = None

    def record(self) -> dict[str, object]:
        """The crop's provenance entry: where in the frame it came from."""
        return {
            "box": list(self.box),
            "detected_box": [round(v, 1) for v in _corners(self.person)],
            "score": round(self.person.score, 4),
            "not_solo": self.not_solo,
            "head_box": [round(v, 1) for v in _corners(self.head)] if self.head else None,
        }


def with_margin(box: FaceBox, margin: float, width: int, height: int) -> Box:
    """The box grown by `margin` of its width and height on every side, clipped to the image."""
    grow_x, grow_y = (box.x2 - box.x1) * margin, (box.y2 - box.y1) * margin
    return (
        max(0, round(box.x1 - grow_x)),
        max(0, round(box.y1 - grow_y)),
        min(width, round(box.x2 + grow_x)),
        min(height, round(box.y2 + grow_y)),
    )


def share_inside(box: Box, other: FaceBox) -> float:
    """How much of `other`'s area lies inside `box` (0–1)."""
    inter_w = min(box[2], other.x2) - max(box[0], other.x1)
    inter_h = min(box[3], other.y2) - max(box[1], other.y1)
    if inter_w <= 0 or inter_h <= 0 or other.area <= 0:
        return 0.0
    return inter_w * inter_h / other.area


def find_persons(
    image: Image.Image,
    detector: FaceDetector,
    margin: float,
    heads: FaceDetector | None = None,
) -> list[PersonCrop]:
    """Every person the detector finds, left to right, with its crop box and head."""
    width, height = image.size
    people = sorted(
        (p.clipped(width, height) for p in detector.detect(image)), key=lambda p: (p.x1, p.y1)
    )
    people = [p for p in people if p.area > 0]
    found_heads = heads.detect(image) if heads is not None and people else []
    crops = []
    for index, person in enumerate(people):
        box = with_margin(person, margin, width, height)
        others = people[:index] + people[index + 1 :]
        crops.append(
            PersonCrop(
                person,
                box,
                not_solo=any(share_inside(box, other) >= NOT_SOLO_SHARE for other in others),
                head=_head_of(person, found_heads),
            )
        )
    return crops


def _head_of(person: FaceBox, heads: Sequence[FaceBox]) -> FaceBox | None:
    """The most confident head whose centre lies in the person's upper half."""
    upper = person.y1 + (person.y2 - person.y1) / 2
    inside = [
        head
        for head in heads
        if person.x1 <= (head.x1 + head.x2) / 2 <= person.x2
        and person.y1 <= (head.y1 + head.y2) / 2 <= upper
    ]
    return max(inside, key=lambda head: head.score, default=None)


def stage_boxes(crop: PersonCrop, margin: float, width: int, height: int) -> dict[str, Box]:
    """The three-stage crops of a person: `far` (full body, the crop itself), `mid` (upper
    body) and `close` (head); the last two only when its head is known."""
    stages = {"far": crop.box}
    head = crop.head
    if head is None:
        return stages
    head_h = head.y2 - head.y1
    chest = min(crop.person.y2, head.y2 + UPPER_BODY_HEADS * head_h)
    upper = FaceBox(crop.person.x1, crop.person.y1, crop.person.x2, chest, crop.person.score)
    stages["mid"] = with_margin(upper, margin, width, height)
    stages["close"] = with_margin(head, margin, width, height)
    return stages


def head_share(box: Box, head: FaceBox | None) -> float | None:
    """The head's share of a crop's area: what shot classification measures (close/mid/far)."""
    if head is None:
        return None
    area = (box[2] - box[0]) * (box[3] - box[1])
    inside = share_inside(box, head) * head.area
    return inside / area if area > 0 else None


def _corners(box: FaceBox) -> tuple[float, float, float, float]:
    return (box.x1, box.y1, box.x2, box.y2)
