"""Which captioner the `vlm` caption strategy uses, from the configuration.

Kept apart from `vision.captioner` because the backends it builds (LLaVA, Ollama) import that
interface; a factory beside them keeps the imports one-way.
"""

from __future__ import annotations

from collections.abc import Sequence

from lora_pipeline.vision.captioner import Captioner, CaptionerError, load_captioner
from lora_pipeline.vision.identification import parse_identifier_spec
from lora_pipeline.vision.llava import LlavaCaptioner
from lora_pipeline.vision.ollama import OllamaCaptioner


def build_captioner(
    spec: str | None, identifiers: Sequence[str | None] = (), device: str = "auto"
) -> Captioner | None:
    """The vlm strategy's captioner, in this order: `spec` ('package.module:factory', from
    LORA_PIPELINE_CAPTIONER) when set; else the first `llava:<model>` identifier spec (the
    identification stage's LLaVA); else the first `ollama:<url>#<model>` one; else None."""
    if spec:
        return load_captioner(spec)
    try:
        parsed = [parse_identifier_spec(text) for text in identifiers if text]
    except ValueError as error:
        raise CaptionerError(str(error)) from None
    llava = next((item for item in parsed if item.kind == "llava"), None)
    if llava is not None:
        return LlavaCaptioner(llava.target, device=device)
    ollama = next((item for item in parsed if item.kind == "ollama"), None)
    if ollama is not None:
        return OllamaCaptioner(ollama.target, ollama.model)
    return None
