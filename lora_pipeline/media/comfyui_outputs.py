"""The ComfyUI output folder as an ingest source: new files, their character, their settings.

- `scan_output_folder` lists image files not seen before (the caller passes what the registry
  has seen) that have stopped changing: ComfyUI writes a PNG in place, so a file modified in
  the last seconds may still be half written.
- `match_character` reads the file name: ComfyUI names outputs `<filename_prefix>_00001_.png`,
  and studios put the character's slug or trigger word in the prefix.
- `read_generation_params` reads the API-format graph that ComfyUI's SaveImage stores in the
  PNG `prompt` text chunk and returns the sampler settings, prompts, checkpoint and LoRAs.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from lora_pipeline.media.store import UnsafePathError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# A file must be this old before it is read: long enough for SaveImage to finish writing.
SETTLE_SECONDS = 2.0
_SAMPLER_TYPES = ("KSampler", "KSamplerAdvanced")
_CHECKPOINT_TYPES = ("CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader")
_MAX_LINK_DEPTH = 8


@dataclass(frozen=True)
class OutputFile:
    """A file of the output folder, by its path relative to the folder (POSIX form)."""

    relpath: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.relpath, self.size, self.mtime_ns)


@dataclass(frozen=True)
class CharacterName:
    """What a file name may start with to belong to a character."""

    slug: str
    trigger_word: str


def _walk(folder: Path) -> Iterator[os.DirEntry[str]]:
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                # Symlinks are not followed: they could lead out of the folder.
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.startswith("."):
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    yield entry


def scan_output_folder(
    folder: Path,
    seen: set[tuple[str, int, int]],
    settle_s: float = SETTLE_SECONDS,
    now: float | None = None,
    limit: int | None = None,
) -> list[OutputFile]:
    """New, settled image files under `folder`, oldest first (at most `limit` of them)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"ComfyUI output folder {folder} does not exist")
    cutoff_ns = int(((time.time() if now is None else now) - settle_s) * 1e9)
    found: list[OutputFile] = []
    for entry in _walk(folder):
        if not entry.name.lower().endswith(IMAGE_SUFFIXES) or entry.name.startswith("."):
            continue
        stat = entry.stat(follow_symlinks=False)
        if stat.st_mtime_ns > cutoff_ns or stat.st_size == 0:
            continue
        relpath = Path(entry.path).relative_to(folder).as_posix()
        candidate = OutputFile(relpath, stat.st_size, stat.st_mtime_ns)
        if candidate.key not in seen:
            found.append(candidate)
    found.sort(key=lambda f: (f.mtime_ns, f.relpath))
    return found[:limit] if limit is not None else found


def output_path(folder: Path, relpath: str) -> Path:
    """The file `relpath` inside the output folder; UnsafePathError if it would leave it."""
    base = Path(folder).resolve()
    if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
        raise UnsafePathError(f"not a path inside the ComfyUI output folder: {relpath!r}")
    path = (base / relpath).resolve()
    if not path.is_relative_to(base):
        raise UnsafePathError(f"{relpath!r} leaves the ComfyUI output folder")
    return path


def _starts_with_name(stem: str, name: str) -> bool:
    # The name must end at a separator or a digit: "aiko_0001" and "aiko-2" match "aiko",
    # "aikoto_0001" does not.
    lowered, name = stem.lower(), name.lower()
    if not name or not lowered.startswith(name):
        return False
    rest = lowered[len(name) :]
    return rest == "" or not rest[0].isalpha()


def match_character(relpath: str, characters: Sequence[CharacterName]) -> str | None:
    """The character whose slug or trigger word starts the file name; the longest wins
    ("aiko_school" before "aiko"). Folders count too: `aiko/00001_.png` belongs to aiko."""
    parts = Path(relpath).parts
    stems = [Path(parts[-1]).stem, *parts[:-1]]
    best: tuple[int, str] | None = None
    for character in characters:
        for name in {character.slug, character.trigger_word}:
            variants = {name, name.replace("-", "_"), name.replace("_", "-")}
            for variant in variants:
                if any(_starts_with_name(stem, variant) for stem in stems) and (
                    best is None or len(variant) > best[0]
                ):
                    best = (len(variant), character.slug)
    return best[1] if best else None


def match_project(relpath: str, project_slugs: Sequence[str]) -> str | None:
    """The project whose slug starts the file name (or a folder of its path)."""
    names = [CharacterName(slug, slug) for slug in project_slugs]
    return match_character(relpath, names)


# --- generation parameters from the PNG `prompt` chunk ----------------------------------------


def read_generation_params(path: Path) -> dict[str, Any] | None:
    """The settings a ComfyUI PNG was made with, or None when it carries no readable graph."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            text = image.info.get("prompt")
            if text is None:
                image.load()  # chunks after the pixel data are read only with them
                text = image.info.get("prompt")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None  # the picture itself is checked (and refused) when it is loaded
    if not isinstance(text, str):
        return None
    try:
        graph = json.loads(text)
    except json.JSONDecodeError:
        return None
    return params_from_graph(graph) if isinstance(graph, dict) else None


def params_from_graph(graph: dict[str, Any]) -> dict[str, Any] | None:
    """Sampler settings, prompts, checkpoint and LoRAs from an API-format ComfyUI graph."""
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict)}
    sampler = _main_sampler(nodes)
    if sampler is None:
        return None
    inputs = sampler.get("inputs", {})
    params: dict[str, Any] = {"backend": "comfyui"}
    seed = inputs.get("seed", inputs.get("noise_seed"))
    for key, value in (
        ("seed", seed),
        ("steps", inputs.get("steps")),
        ("cfg", inputs.get("cfg")),
        ("sampler", inputs.get("sampler_name")),
        ("scheduler", inputs.get("scheduler")),
        ("denoise", inputs.get("denoise")),
    ):
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            params[key] = value
    params["prompt"] = " ".join(_texts(nodes, inputs.get("positive"), 0))
    params["negative_prompt"] = " ".join(_texts(nodes, inputs.get("negative"), 0))
    params.update(_latent_size(nodes, inputs.get("latent_image")))
    checkpoint = _first_input(nodes, _CHECKPOINT_TYPES, ("ckpt_name", "unet_name"))
    if checkpoint is not None:
        params["checkpoint"] = checkpoint
    loras = _loras(nodes)
    if loras:
        params["loras"] = loras
    return params


def _main_sampler(nodes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The sampler that starts from an empty latent (a hires-fix second pass does not)."""
    samplers = [
        nodes[key]
        for key in sorted(nodes, key=_node_order)
        if nodes[key].get("class_type") in _SAMPLER_TYPES
    ]
    for sampler in samplers:
        latent = _linked(nodes, sampler.get("inputs", {}).get("latent_image"))
        if latent is not None and latent.get("class_type") == "EmptyLatentImage":
            return sampler
    return samplers[0] if samplers else None


def _node_order(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 30, key)


def _linked(nodes: dict[str, dict[str, Any]], link: Any) -> dict[str, Any] | None:
    """The node a link `[node_id, output_index]` points to."""
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in nodes:
        return nodes[str(link[0])]
    return None


def _texts(nodes: dict[str, dict[str, Any]], link: Any, depth: int) -> list[str]:
    """The prompt texts feeding a conditioning input, through combine/concat nodes."""
    node = _linked(nodes, link)
    if node is None or depth > _MAX_LINK_DEPTH:
        return []
    inputs = node.get("inputs", {})
    text = inputs.get("text")
    if isinstance(text, str):
        return [text.strip()] if text.strip() else []
    if text is not None:  # the text comes from another node (a primitive or string node)
        return _string_of(nodes, text, depth + 1)
    found: list[str] = []
    for value in inputs.values():
        found += _texts(nodes, value, depth + 1)
    return found


def _string_of(nodes: dict[str, dict[str, Any]], link: Any, depth: int) -> list[str]:
    node = _linked(nodes, link)
    if node is None or depth > _MAX_LINK_DEPTH:
        return []
    for key in ("text", "string", "value", "prompt"):
        value = node.get("inputs", {}).get(key)
        if isinstance(value, str):
            return [value.strip()] if value.strip() else []
        if isinstance(value, list):
            return _string_of(nodes, value, depth + 1)
    return []


def _latent_size(nodes: dict[str, dict[str, Any]], link: Any) -> dict[str, int]:
    node = _linked(nodes, link)
    if node is None:
        return {}
    inputs = node.get("inputs", {})
    return {
        key: inputs[key]
        for key in ("width", "height")
        if isinstance(inputs.get(key), int) and not isinstance(inputs.get(key), bool)
    }


def _first_input(
    nodes: dict[str, dict[str, Any]], class_types: Sequence[str], keys: Sequence[str]
) -> str | None:
    for key in sorted(nodes, key=_node_order):
        if nodes[key].get("class_type") in class_types:
            for name in keys:
                value = nodes[key].get("inputs", {}).get(name)
                if isinstance(value, str):
                    return value
    return None


def _loras(nodes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    loras = []
    for key in sorted(nodes, key=_node_order):
        node = nodes[key]
        if not re.fullmatch(r"LoraLoader(ModelOnly)?", str(node.get("class_type"))):
            continue
        inputs = node.get("inputs", {})
        if isinstance(inputs.get("lora_name"), str):
            loras.append(
                {
                    "name": inputs["lora_name"],
                    "strength_model": inputs.get("strength_model"),
                    "strength_clip": inputs.get("strength_clip"),
                }
            )
    return loras
