"""Reference matching with a tiny CLIP vision model: approved images are the references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.media.images import image_sha256
from lora_pipeline.vision.identification import CharacterProfile, Identifier, IdentifierError
from lora_pipeline.vision.reference import ReferenceIdentifier, ReferenceImage

CAST = [CharacterProfile("aiko", "Aiko", "teal hair"), CharacterProfile("kenji", "Kenji", "")]


def _picture(seed: int) -> Image.Image:
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((64, 64), Image.Resampling.NEAREST)


def _reference(folder: Path, image: Image.Image) -> ReferenceImage:
    sha = image_sha256(image)
    path = folder / f"{sha}.png"
    image.save(path)
    return ReferenceImage(sha, path)


def _threshold(model: Path, aiko: Image.Image, others: list[Image.Image]) -> float:
    """A threshold between "the same picture" (cosine 1) and the closest other picture."""
    identifier = ReferenceIdentifier(str(model), lambda slug: [], device="cpu")
    vectors = identifier.embed([aiko, *others])
    closest = float((vectors[1:] @ vectors[0]).max())
    assert closest < 0.9999, "the tiny model must tell these pictures apart"
    return (1 + closest) / 2


def test_frames_match_the_character_whose_approved_image_they_show(
    tiny_clip: Path, tmp_path: Path
) -> None:
    aiko_pic, kenji_pic, stranger = _picture(1), _picture(2), _picture(3)
    refs = {
        "aiko": [_reference(tmp_path, aiko_pic)],
        "kenji": [_reference(tmp_path, kenji_pic)],
    }
    threshold = _threshold(tiny_clip, aiko_pic, [kenji_pic, stranger])
    threshold = max(threshold, _threshold(tiny_clip, kenji_pic, [aiko_pic, stranger]))
    identifier = ReferenceIdentifier(
        str(tiny_clip), lambda slug: refs[slug], threshold=threshold, device="cpu"
    )
    assert isinstance(identifier, Identifier)
    results = identifier.identify([aiko_pic, kenji_pic, stranger], CAST)
    assert [set(r.slugs) for r in results] == [{"aiko"}, {"kenji"}, set()]
    assert results[0].raw_answer.startswith(f"reference cosine (threshold {threshold}): aiko 1.000")


def test_approved_images_make_it_better_over_time(tiny_clip: Path, tmp_path: Path) -> None:
    approved: dict[str, list[ReferenceImage]] = {"aiko": [], "kenji": []}
    identifier = ReferenceIdentifier(
        str(tiny_clip), lambda slug: approved[slug], threshold=0.9999, device="cpu"
    )
    frame = _picture(7)
    # With no approved image at all the frames are not judged: they wait.
    with pytest.raises(IdentifierError, match="no approved image"):
        identifier.identify([frame], CAST)
    approved["kenji"].append(_reference(tmp_path, _picture(8)))
    (before,) = identifier.identify([frame], CAST)
    assert before.slugs == frozenset()
    assert "no approved images yet: aiko" in before.raw_answer
    approved["aiko"].append(_reference(tmp_path, frame))
    (after,) = identifier.identify([frame], CAST)
    assert after.slugs == {"aiko"}


def test_reference_embeddings_are_cached_by_sha256(tiny_clip: Path, tmp_path: Path) -> None:
    refs = [_reference(tmp_path, _picture(seed)) for seed in (1, 2)]
    cache = tmp_path / "cache"
    first = ReferenceIdentifier(str(tiny_clip), lambda slug: refs, cache_dir=cache, device="cpu")
    answer = first.identify([_picture(1)], CAST[:1])[0].raw_answer
    cached = sorted(p.name for p in cache.rglob("*.npy"))
    assert cached == sorted(f"{r.sha256}.npy" for r in refs)
    # A new process (a new identifier) reads the cache: the image files are not needed.
    for reference in refs:
        reference.path.unlink()
    again = ReferenceIdentifier(str(tiny_clip), lambda slug: refs, cache_dir=cache, device="cpu")
    assert again.identify([_picture(1)], CAST[:1])[0].raw_answer == answer


def test_threshold_is_checked(tiny_clip: Path) -> None:
    with pytest.raises(ValueError):
        ReferenceIdentifier(str(tiny_clip), lambda slug: [], threshold=1.5)
    assert ReferenceIdentifier(str(tiny_clip), lambda slug: []).identify([], CAST) == []
