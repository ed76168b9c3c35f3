"""The identifier an identification setting names (`llava:`, `ollama:`, `reference:`, `ccip:`,
or `<reference:|ccip:>+<llava:|ollama:>` for matching first and the VLM otherwise).

Kept apart from `vision.identification` because the backends it builds import that interface;
a factory beside them keeps the imports one-way.
"""

from __future__ import annotations

from typing import Any

from lora_pipeline.vision.ccip import load_ccip
from lora_pipeline.vision.combined import CombinedIdentifier
from lora_pipeline.vision.identification import (
    Identifier,
    parse_identifier_spec,
    split_combined_spec,
)
from lora_pipeline.vision.llava import LlavaIdentifier
from lora_pipeline.vision.ollama import OllamaIdentifier
from lora_pipeline.vision.reference import ReferenceIdentifier


def build_identifier(
    spec: str,
    device: str = "auto",
    references: Any = None,
    reference_threshold: float = 0.85,
    cache_dir: Any = None,
) -> Identifier:
    """The identifier a setting names. `references` (slug -> approved images) and `cache_dir`
    (for embeddings) serve reference matching; `reference_threshold` is its threshold (the
    project's, when it sets one), also the confidence a combined identifier needs."""
    combined = split_combined_spec(spec)
    if combined is not None:
        matching = build_identifier(combined[0], device, references, reference_threshold, cache_dir)
        assert isinstance(matching, ReferenceIdentifier)  # split_combined_spec checked the kind
        return CombinedIdentifier(
            matching, build_identifier(combined[1], device), reference_threshold
        )
    parsed = parse_identifier_spec(spec)
    if parsed.kind == "llava":
        return LlavaIdentifier(parsed.target, device=device)
    if parsed.kind == "ollama":
        return OllamaIdentifier(parsed.target, parsed.model)
    if references is None:
        raise ValueError("reference matching needs the characters' approved images")
    embedder = load_ccip(f"ccip:{parsed.target}", device) if parsed.kind == "ccip" else None
    return ReferenceIdentifier(
        parsed.target,
        references,
        threshold=reference_threshold,
        cache_dir=cache_dir,
        device=device,
        embedder=embedder,
    )
