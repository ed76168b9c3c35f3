"""Quality gates: readable images, minimum resolution, near-duplicates, captions."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, ImageDraw

from lora_pipeline.dataset.captions import caption_dataset_design
from lora_pipeline.dataset.perceptual import (
    NearDuplicate,
    duplicate_groups,
    fingerprint,
    near_duplicates,
)
from lora_pipeline.dataset.quality import (
    captions_complete,
    minimum_resolution,
    no_near_duplicates,
    readable_images,
    scan_images,
)
from lora_pipeline.dataset.versions import ManifestImage, build_manifest, write_dataset_version
from lora_pipeline.media.store import DataRoot


def drawing(seed: int, size: int = 96) -> Image.Image:
    """A picture with structure (a shape placed by the seed), so hashes tell pictures apart."""
    image = Image.new("RGB", (size, size), (seed * 40 % 256, 90, 160))
    draw = ImageDraw.Draw(image)
    x, y = seed * 13 % (size // 2), seed * 29 % (size // 2)
    draw.ellipse((x, y, x + size // 2, y + size // 3), fill=(250, 220, 30))
    draw.rectangle((size - y - 20, x, size - y, x + 40), fill=(20, 20, 20))
    return image


def stored(root: DataRoot, image_id: int, image: Image.Image) -> ManifestImage:
    item = root.put_image(image)
    return ManifestImage(image_id, item.sha256, item.relpath, *image.size, "generated")


def corrupt(root: DataRoot, image_id: int) -> ManifestImage:
    data = b"\x89PNG\r\n\x1a\n" + b"truncated"
    sha = hashlib.sha256(data).hexdigest()
    relpath = f"images/{sha[:2]}/{sha}.png"
    root.write_bytes_atomic(relpath, data)
    return ManifestImage(image_id, sha, relpath, 64, 64, "upload")


def version(root: DataRoot, images: list[ManifestImage]) -> tuple[Path, dict]:
    manifest = build_manifest("aya", "aya", images)
    return write_dataset_version(root, manifest), manifest


def test_scan_and_gates(data_root: DataRoot) -> None:
    near_copy = drawing(1).copy()
    near_copy.putpixel((5, 5), (0, 0, 0))  # one pixel: still the same picture
    images = [
        stored(data_root, 1, drawing(1)),
        stored(data_root, 2, drawing(2, size=600)),
        corrupt(data_root, 3),
        stored(data_root, 4, near_copy),
        stored(data_root, 5, drawing(3)),
        stored(data_root, 6, drawing(1).resize((120, 120))),  # resized: the same picture too
    ]
    version_dir, manifest = version(data_root, images)
    scans = scan_images(version_dir, manifest)
    assert [(s.image_id, s.width) for s in scans] == [
        (1, 96),
        (2, 600),
        (3, None),
        (4, 96),
        (5, 96),
        (6, 120),
    ]

    readable = readable_images(scans)
    assert not readable.passed
    assert readable.description == "5/6 images decode"
    assert readable.problems[0].startswith("image 3 (aya_0003.png): ")

    resolution = minimum_resolution(scans, 512)
    assert not resolution.passed
    assert resolution.description == "1/5 images have a short side of at least 512 px"
    assert resolution.problems[0] == "image 1 (aya_0001.png) is 96x96"
    assert minimum_resolution(scans, 96).passed

    duplicates = no_near_duplicates(scans)
    assert not duplicates.passed
    assert duplicates.problems == [
        "near-duplicates: aya_0001.png (id 1), aya_0004.png (id 4), aya_0006.png (id 6)"
    ]
    assert duplicates.description == "1 group(s) of near-duplicates, 2 image(s) more than needed"


def test_flat_images_of_other_colours_are_not_duplicates(data_root: DataRoot) -> None:
    flat = [stored(data_root, i, Image.new("RGB", (64, 64), (i * 60, 20, 200))) for i in (1, 2, 3)]
    version_dir, manifest = version(data_root, flat)
    gate = no_near_duplicates(scan_images(version_dir, manifest))
    assert gate.passed
    assert gate.description == "no near-duplicates among 3 images"


def test_near_duplicates_and_groups() -> None:
    prints = [fingerprint(drawing(seed)) for seed in (1, 2, 1, 3, 2)]
    pairs = near_duplicates(prints)
    assert [(p.first, p.second) for p in pairs] == [(0, 2), (1, 4)]
    assert all(p.hash_distance == 0 for p in pairs)
    assert duplicate_groups(5, pairs) == [[0, 2], [1, 4]]
    chain = [NearDuplicate(3, 4, 1), NearDuplicate(0, 4, 2), NearDuplicate(1, 2, 0)]
    assert duplicate_groups(6, chain) == [[0, 3, 4], [1, 2]]
    assert near_duplicates(prints[:1]) == []


def test_captions_complete(data_root: DataRoot) -> None:
    version_dir, manifest = version(
        data_root, [stored(data_root, i, drawing(i)) for i in (1, 2, 3)]
    )
    missing = captions_complete(version_dir, manifest)
    assert not missing.passed
    assert missing.problems[0] == "aya_0001.png: no readable caption file aya_0001.txt"
    caption_dataset_design(version_dir, manifest, "teal hair")
    assert captions_complete(version_dir, manifest).passed
    (version_dir / "captions" / "aya_0002.txt").write_text("  ")
    (version_dir / "captions" / "aya_0003.txt").write_text("teal hair, aya")
    gate = captions_complete(version_dir, manifest)
    assert gate.description == "1/3 images have a caption with the trigger word"
    assert gate.problems == [
        "aya_0002.png: empty caption",
        "aya_0003.png: caption does not start with 'aya'",
    ]
