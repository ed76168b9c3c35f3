"""The captioner interface of the `vlm` caption strategy.

A vision-language model describes an image in a sentence. Any object with a `name` and a
`caption(image) -> str` method is a Captioner (one with `caption_many(images)` too is captioned
a batch at a time); a plain function `image -> str` becomes one with `as_captioner`.
`load_captioner("package.module:factory")` imports a factory named by configuration, so a VLM
backend plugs in without this package importing it. `vision.captioner_factory.build_captioner`
picks the captioner of the configuration.
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from lora_pipeline.errors import PipelineError

# What the built-in VLM captioners ask: the words a LoRA caption needs, not a story.
CAPTION_PROMPT = (
    "Describe this image for a LoRA training caption, as one short comma-separated list of "
    "what is visible: hair, eyes, clothing and accessories, pose and expression, background "
    "and lighting, and framing (close-up, upper body or full body). Do not name the character. "
    "Answer with the list only."
)
# A CLIP text encoder reads 75 tokens (kohya: up to 225); a longer caption is cut at a comma.
CAPTION_MAX_CHARS = 300
_LABEL = re.compile(r"^(?:assistant|user|answer|caption|description|tags)\s*:\s*", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^(?:sure[,!.]?\s*)?(?:here (?:is|are) [^:]*:\s*|"
    r"(?:the|this) (?:image|picture|illustration) (?:shows|depicts|features|contains)\s+|"
    r"in (?:the|this) (?:image|picture),?\s+)",
    re.IGNORECASE,
)
_SEPARATORS = re.compile(r"[\n;,]+|(?<=[^\W\d])\.(?:\s+|$)")
_BULLET = re.compile(r"^(?:\d+[.)]|[-*•])\s+")
_REPEATED_WORD = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)


class CaptionerError(PipelineError, ValueError):
    """A captioner cannot be loaded, or it returned something that is not a caption."""


@runtime_checkable
class Captioner(Protocol):
    """Describes an image in free text. `name` identifies the model in metadata files."""

    name: str

    def caption(self, image: Image.Image) -> str: ...


@runtime_checkable
class BatchCaptioner(Captioner, Protocol):
    """A Captioner that describes several images in one call (a batch on the GPU)."""

    def caption_many(self, images: Sequence[Image.Image]) -> list[str]: ...


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


def caption_images(captioner: Captioner, images: Sequence[Image.Image]) -> list[str]:
    """The captioner's text for each image, in order: one call when it batches."""
    if isinstance(captioner, BatchCaptioner):
        texts = captioner.caption_many(list(images))
    else:
        texts = [captioner.caption(image) for image in images]
    if not isinstance(texts, list) or len(texts) != len(images):
        raise CaptionerError(f"captioner {captioner.name!r} did not give one text per image")
    wrong = next((text for text in texts if not isinstance(text, str)), None)
    if wrong is not None:
        raise CaptionerError(
            f"captioner {captioner.name!r} returned {type(wrong).__name__}, not text"
        )
    return texts


def clean_caption(text: str, echo: str = "", max_chars: int = CAPTION_MAX_CHARS) -> str:
    """A model's answer as one caption line: `part, part, ...`, at most max_chars long.

    Drops control characters and undecodable bytes, an echo of the prompt, a leading role
    label or "The image shows"; lines, sentences and semicolons become comma-separated parts;
    list bullets go, a word repeated in a row (a greedy decoding loop) is kept once, and each
    part appears once. Gibberish stays gibberish, but on one clean line.
    """
    text = _without_echo(" ".join(_printable(text).split()), echo)
    for pattern in (_LABEL, _PREAMBLE):
        text = pattern.sub("", text, count=1)
    parts: list[str] = []
    seen: set[str] = set()
    for raw in _SEPARATORS.split(text):
        part = _REPEATED_WORD.sub(r"\1", _BULLET.sub("", " ".join(raw.split())))
        part = part.strip(" .:-*•\"'")
        if part and part.casefold() not in seen:
            seen.add(part.casefold())
            parts.append(part)
    return _shortened(", ".join(parts), max_chars)


def _printable(text: str) -> str:
    # Line breaks separate parts; other control and format characters, and the replacement
    # character of undecodable bytes, are noise.
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if char in "\n\r\u2028\u2029":
            kept.append(",")
        elif category in ("Cc", "Cf") or char == "\ufffd":
            kept.append(" ")
        else:
            kept.append(char)
    return "".join(kept)


def _without_echo(text: str, echo: str) -> str:
    # Some models repeat the question before answering it.
    echo = " ".join(_printable(echo).split())
    if echo and text.casefold().startswith(echo.casefold()):
        return text[len(echo) :].lstrip(" :")
    return text


def _shortened(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(", ", 0, max_chars + 1)
    if cut <= 0:
        cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > 0 else max_chars].rstrip(" ,")
