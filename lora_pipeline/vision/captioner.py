"""The captioner interface of the `vlm` caption strategy.

A vision-language model describes an image in a sentence. Any object with a `name` and a
`caption(image) -> str` method is a Captioner; a plain function `image -> str` becomes one
with `as_captioner`. `load_captioner("package.module:factory")` imports a factory named by
configuration, so a VLM backend plugs in without this package importing it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from PIL import Image


class CaptionerError(ValueError):
    """A captioner cannot be loaded, or it returned something that is not a caption."""


@runtime_checkable
class Captioner(Protocol):
    """Describes an image in free text. `name` identifies the model in metadata files."""

    name: str

    def caption(self, image: Image.Image) -> str: ...


class FunctionCaptioner:
    """A Captioner around a plain function `image -> str`."""

    def __init__(self, function: Callable[[Image.Image], str], name: str | None = None) -> None:
        if not callable(function):
            raise CaptionerError(f"a captioner must be callable, got {type(function).__name__}")
        self.function = function
        self.name = name or getattr(function, "__name__", "function")

    def caption(self, image: Image.Image) -> str:
        text = self.function(image)
        if not isinstance(text, str):
            raise CaptionerError(
                f"captioner {self.name!r} returned {type(text).__name__}, not text"
            )
        return text


def as_captioner(value: Any) -> Captioner:
    """`value` itself if it is a Captioner, a FunctionCaptioner if it is a function."""
    if isinstance(value, Captioner):
        return value
    if callable(value):
        return FunctionCaptioner(value)
    raise CaptionerError(f"{value!r:.80} is neither a Captioner nor a function image -> text")


def load_captioner(spec: str) -> Captioner:
    """Import `module:attribute` and call it (no arguments) to get the captioner.

    The attribute may also be a Captioner instance, which is used as it is.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise CaptionerError(f"captioner {spec!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CaptionerError(f"cannot import captioner module {module_name!r}: {error}") from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise CaptionerError(f"module {module_name!r} has no {attribute!r}") from None
    if isinstance(target, Captioner):
        return target
    if not callable(target):
        raise CaptionerError(f"{spec} is neither a Captioner nor a factory")
    return as_captioner(target())
