"""Identifying a LoRA's base model: the file that holds its weights, and cheap or full hashes.

Both backends need them: the trainer for its resume fingerprint and the kohya metadata, the
kohya backend for the base model hash it adds to kohya's output.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lora_pipeline.generation.local import (
    GenerationError,
    ModelSource,
    SourceKind,
    resolve_model_source,
)


def sha256_and_legacy_hash(path: Path) -> tuple[str, str]:
    """sha256 of the whole file, and the webui's old 8-digit hash (64 KiB at offset 1 MiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
        stream.seek(0x100000)
        legacy = hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]
    return digest.hexdigest(), legacy


def unet_weights_file(source: ModelSource) -> Path | None:
    """The file that identifies the base model: the checkpoint, or the UNet weights of a folder."""
    if source.kind is SourceKind.SINGLE_FILE:
        return Path(source.location)
    if source.kind is SourceKind.FOLDER:
        candidates = sorted((Path(source.location) / "unet").glob("diffusion_pytorch_model*"))
        return candidates[0] if candidates else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, "unet/diffusion_pytorch_model.safetensors")
    return Path(cached) if isinstance(cached, str) else None


def unet_weights_file_of(base_model: str) -> Path | None:
    """`unet_weights_file` of a base model as configured; None when it cannot be resolved."""
    try:
        return unet_weights_file(resolve_model_source(base_model))
    except GenerationError:
        return None


def base_model_identity(source: ModelSource) -> dict[str, Any]:
    """Cheap identity of the base weights (no hashing of gigabytes) for resume fingerprints."""
    weights = unet_weights_file(source)
    if weights is None or not weights.is_file():
        return {"model": source.location}
    stat = weights.stat()
    return {"model": source.location, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def base_model_name(source: ModelSource) -> str:
    return source.location if source.kind is SourceKind.HUB else Path(source.location).name
