"""Generation settings: the limits of every value, declared once, and the one parser of the
numbers people type.

Local generation, the ComfyUI workflow builder, the registry (character settings and generation
jobs), the CLI and the review app all check seeds, steps, cfg, sizes, sampler names, LoRA
strengths and frame counts here, so a value one of them accepts the others accept too. The
limits are ComfyUI's own (KSampler, EmptyLatentImage, LoraLoader in its object_info) except the
seed: ComfyUI takes 0..2^64-1, but the registry stores seeds in a signed 64-bit BIGINT.

A shared kernel module: it imports no other package of the pipeline but `errors`, so the
registry may use it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lora_pipeline.errors import PipelineError


class InvalidSettingError(PipelineError, ValueError):
    """A setting or typed number outside its limits; one line naming the field and its range."""


@dataclass(frozen=True)
class Limit:
    """The values a number may take: whole or not, from `low` to `high` inclusive, and a
    multiple of `step` when one is given."""

    low: float = -math.inf
    high: float = math.inf
    whole: bool = False
    step: int | None = None

    def bounds(self) -> str:
        if math.isinf(self.low) and math.isinf(self.high):
            return ""
        return f" between {_show(self.low)} and {_show(self.high)}"

    def kind(self) -> str:
        return "a whole number" if self.whole else "a number"

    def check(self, value: object, label: str) -> int | float:
        """`value` as an int (whole) or float, or InvalidSettingError; numpy numbers count,
        booleans and text do not."""
        number = as_whole(value) if self.whole else as_real(value)
        if number is None:
            raise InvalidSettingError(
                f"{label} must be {self.kind()}{self.bounds()}, got {value!r}"
            )
        if not self.low <= number <= self.high:
            raise InvalidSettingError(
                f"{label} must be between {_show(self.low)} and {_show(self.high)}, "
                f"got {_show(number)}"
            )
        if self.step and number % self.step:
            raise InvalidSettingError(f"{label} must be a multiple of {self.step}, got {number}")
        return number


def _show(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def as_whole(value: object) -> int | None:
    """`value` as an int if it is one (numpy integers included, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def as_real(value: object) -> float | None:
    """`value` as a finite float if it is a number (numpy included, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


MAX_SEED = 2**63 - 1  # the registry's BIGINT; ComfyUI's KSampler would take up to 2**64 - 1
MAX_NAME_LENGTH = 64  # the registry's sampler and scheduler columns
# One limit per numeric setting (ComfyUI's ranges: KSampler, EmptyLatentImage, LoraLoader).
LIMITS: dict[str, Limit] = {
    "seed": Limit(0, MAX_SEED, whole=True),
    "steps": Limit(1, 10_000, whole=True),
    "cfg": Limit(0.0, 100.0),
    "width": Limit(16, 16_384, whole=True, step=8),
    "height": Limit(16, 16_384, whole=True, step=8),
    "lora_strength": Limit(-100.0, 100.0),
    "frames": Limit(1, 10_000, whole=True),
    "frame_rate": Limit(0.01, 240.0),
}
NAME_SETTINGS = ("sampler", "scheduler")
ANY_NUMBER = Limit()
POSITIVE_WHOLE = Limit(1, MAX_SEED, whole=True)  # ids and counts
_WHOLE_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _field(name: str, default: Any) -> Any:
    # The pydantic constraints come from LIMITS too, so the JSON schema shows the same ranges.
    limit = LIMITS[name]
    return Field(default, ge=limit.low, le=limit.high, multiple_of=limit.step)


class GenerationSettings(BaseModel):
    """The settings of one generation (a character's defaults, a job, a workflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int | None = _field("seed", None)
    steps: int = _field("steps", 20)
    cfg: float = _field("cfg", 7.0)
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = _field("width", 512)
    height: int = _field("height", 512)
    lora_strength: float = _field("lora_strength", 0.8)
    frames: int = _field("frames", 16)
    frame_rate: float = _field("frame_rate", 8.0)

    @field_validator(*LIMITS, mode="before")
    @classmethod
    def _in_limits(cls, value: object, info: Any) -> object:
        if value is None and info.field_name == "seed":  # no fixed seed: a fresh one per run
            return None
        return LIMITS[info.field_name].check(value, info.field_name)

    @field_validator(*NAME_SETTINGS, mode="before")
    @classmethod
    def _a_name(cls, value: object, info: Any) -> str:
        return check_name(value, info.field_name)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> GenerationSettings:
        """The settings from `values` (the others at their defaults), or InvalidSettingError
        with one line naming the first bad field."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            raise InvalidSettingError(_one_line(error)) from None


SETTING_NAMES = tuple(GenerationSettings.model_fields)


def check_name(value: object, label: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """A sampler, scheduler or model name: non-empty text on one line, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidSettingError(f"{label} must not be empty")
    name = value.strip()
    if len(name) > max_length or any(ch in name for ch in "\x00\r\n"):
        raise InvalidSettingError(
            f"invalid {label} {name[:80]!r}: one line of at most {max_length}"
        )
    return name


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Exception):
        return str(cause)
    field = ".".join(map(str, first["loc"])) or "settings"
    if first["type"] == "extra_forbidden":
        known = ", ".join(GenerationSettings.model_fields)
        return f"unknown generation setting {field!r}: use {known}"
    return f"{field}: {first['msg']}"


def check_settings(
    values: Mapping[str, Any], error: type[Exception] = InvalidSettingError
) -> dict[str, Any]:
    """The given settings checked (and normalised: ints, floats, stripped names), the others
    left out; a bad one raises `error` (the caller's own error type) with one line."""
    try:
        settings = GenerationSettings.of(values)
    except InvalidSettingError as bad:
        if error is InvalidSettingError:
            raise
        raise error(str(bad)) from None
    return {name: getattr(settings, name) for name in values}


def parse_number(text: str, label: str, limit: Limit) -> int | float:
    """A number typed in a form or on the command line, within `limit`; InvalidSettingError
    names `label` and the range otherwise. The one parser of typed seeds, steps, cfg and ids."""
    if limit.whole:
        if not isinstance(text, str) or not _WHOLE_TEXT.fullmatch(text):
            raise InvalidSettingError(
                f"{label} must be a whole number{limit.bounds()}, got {text!r}"
            )
        return limit.check(int(text), label)
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise InvalidSettingError(
            f"{label} must be a number{limit.bounds()}, got {text!r}"
        ) from None
    if not math.isfinite(number):
        raise InvalidSettingError(f"{label} must be a finite number, got {text!r}")
    return limit.check(number, label)


def parse_optional_number(text: str, label: str, limit: Limit) -> int | float | None:
    """`parse_number`, with an empty field meaning None (not given)."""
    return None if not text or not text.strip() else parse_number(text, label, limit)
