"""Caption files of a dataset version: `captions/<file stem>.txt`, one line each.

Every caption starts with the character's trigger word, so that the LoRA ties what it learns
to that token. kohya reads only the first line of a caption file, hence the single line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from lora_pipeline.dataset.versions import IMAGES_DIRNAME, DatasetError, validate_manifest
from lora_pipeline.files import atomic_write_text

CAPTIONS_DIRNAME = "captions"
CAPTION_SUFFIX = ".txt"


class CaptionError(DatasetError):
    """A caption is missing, empty, or does not start with the trigger word."""


def normalize_caption(text: str) -> str:
    """Collapse every run of whitespace (line breaks included) into one space."""
    return " ".join(text.split())


def design_caption(trigger_word: str, design_prompt: str) -> str:
    """`trigger, design prompt`: trigger first, comma-separated parts tidied, trigger once."""
    trigger = normalize_caption(trigger_word)
    if not trigger or "," in trigger:
        raise CaptionError(f"trigger word {trigger_word!r} must be non-empty and have no comma")
    parts = distinct_parts(design_prompt, skip=trigger)
    if parts and starts_with_word(parts[0], trigger):
        # "emma standing outdoors" already opens with the trigger; prefixing would repeat it.
        return ", ".join(parts)
    return ", ".join([trigger, *parts])


def caption_file_name(image_file: str) -> str:
    """The caption file of an image file: same stem, `.txt`."""
    return PurePosixPath(image_file).stem + CAPTION_SUFFIX


def write_captions(
    version_dir: Path, manifest: dict[str, Any], captions: Mapping[str, str]
) -> dict[str, str]:
    """Write `captions/<stem>.txt` for every image of the version; return file → caption."""
    validate_manifest(manifest)
    written = check_captions(manifest, captions)
    version_dir = Path(version_dir)
    missing = [
        entry["file"]
        for entry in manifest["images"]
        if not (version_dir / IMAGES_DIRNAME / entry["file"]).is_file()
    ]
    if missing:
        raise CaptionError(f"{version_dir} is not a complete dataset version: {missing[:5]} absent")
    captions_dir = version_dir / CAPTIONS_DIRNAME
    captions_dir.mkdir(exist_ok=True)
    for image_file, caption in written.items():
        atomic_write_text(captions_dir / caption_file_name(image_file), caption)
    return written


def check_captions(manifest: dict[str, Any], captions: Mapping[str, str]) -> dict[str, str]:
    """Normalised captions in manifest order, or CaptionError if any is missing or wrong."""
    files = [entry["file"] for entry in manifest["images"]]
    unknown = sorted(set(captions) - set(files))
    if unknown:
        raise CaptionError(f"captions given for files not in the manifest: {unknown[:5]}")
    missing = [name for name in files if name not in captions]
    if missing:
        raise CaptionError(f"no caption for {len(missing)} image(s), e.g. {missing[:5]}")
    trigger = normalize_caption(manifest["trigger_word"])
    checked: dict[str, str] = {}
    for name in files:
        caption = normalize_caption(captions[name])
        if not starts_with_word(caption, trigger):
            raise CaptionError(
                f"caption of {name} must start with the trigger word {trigger!r}: {caption!r:.80}"
            )
        checked[name] = caption
    return checked


def caption_dataset_design(
    version_dir: Path, manifest: dict[str, Any], design_prompt: str
) -> dict[str, str]:
    """The "design" strategy: every image gets `trigger, design prompt`."""
    caption = design_caption(manifest["trigger_word"], design_prompt)
    return write_captions(
        version_dir, manifest, {entry["file"]: caption for entry in manifest["images"]}
    )


def load_captions(version_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Read back the captions of a version (file → caption); CaptionError if one is missing."""
    captions_dir = Path(version_dir) / CAPTIONS_DIRNAME
    captions: dict[str, str] = {}
    for entry in manifest["images"]:
        path = captions_dir / caption_file_name(entry["file"])
        try:
            captions[entry["file"]] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CaptionError(f"caption file {path} is missing") from None
    return check_captions(manifest, captions)


def distinct_parts(prompt: str, skip: str) -> list[str]:
    seen = {skip.casefold()}
    parts: list[str] = []
    for raw in prompt.split(","):
        part = normalize_caption(raw)
        if part and part.casefold() not in seen:
            seen.add(part.casefold())
            parts.append(part)
    return parts


def starts_with_word(text: str, word: str) -> bool:
    # A word boundary after the trigger: "emma" opens "emma, ..." but not "emmanuel ...".
    return re.match(re.escape(word) + r"(?![\w])", text, flags=re.IGNORECASE) is not None
