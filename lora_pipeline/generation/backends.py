"""The generator interface the generated_images stage calls.

Two backends draw images: the in-process diffusers pipeline (`LocalImageBackend`) and ComfyUI
over HTTP (the ComfyUI client plugs in behind the same interface).
"""

from __future__ import annotations

from typing import Protocol

from PIL import Image

from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest, LoraSpec


class ImageBackend(Protocol):
    name: str

    def generate(self, request: GenerationRequest, lora: LoraSpec | None = None) -> Image.Image:
        """One image for the request; the same request gives the same image."""
        ...


class LocalImageBackend:
    """Generates in this process with diffusers."""

    name = "diffusers"

    def __init__(self, generator: DiffusersGenerator) -> None:
        self._generator = generator

    def generate(self, request: GenerationRequest, lora: LoraSpec | None = None) -> Image.Image:
        return self._generator.generate(request, lora)
