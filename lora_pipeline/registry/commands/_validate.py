"""The validators every command shares: each returns the value as stored or raises an
`InvalidInputError` with a one-line message."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from os import PathLike
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from lora_pipeline.generation_settings import LIMITS, InvalidSettingError, as_real, as_whole
from lora_pipeline.registry.errors import InvalidInputError

_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TRIGGER_WORD = re.compile(r"[a-z0-9_]{2,32}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_PHASH = re.compile(r"[0-9a-f]{16}")
_VERSION_HASH = re.compile(r"[0-9a-f]{8,64}")
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1  # INTEGER on PostgreSQL


def validate_slug(value: str, what: str = "slug") -> str:
    """Return `value` if it is a valid slug (a Dagster partition key and a folder name)."""
    if not isinstance(value, str) or not _SLUG.fullmatch(value):
        raise InvalidInputError(
            f"invalid {what} {value!r}: use 1 to 64 characters among lower-case letters, "
            "digits, '-' and '_', starting with a letter or a digit"
        )
    return value


def validate_trigger_word(value: str) -> str:
    """Return `value` if it is a valid LoRA trigger word (short, unique, tokenizer-safe)."""
    if (
        not isinstance(value, str)
        or not _TRIGGER_WORD.fullmatch(value)
        or not any(c.isalpha() for c in value)
    ):
        raise InvalidInputError(
            f"invalid trigger word {value!r}: use 2 to 32 characters among lower-case "
            "letters, digits and '_', with at least one letter (e.g. 'char_alice')"
        )
    return value


def _text(
    value: object, what: str, *, required: bool = False, max_length: int | None = None
) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise InvalidInputError(f"{what} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise InvalidInputError(
            f"{what} is too long ({len(value)} characters, at most {max_length})"
        )
    return value


def _optional_text(value: object, what: str, max_length: int | None = None) -> str | None:
    if value is None:
        return None
    return _text(value, what, max_length=max_length) or None


# One notion of "a number" for the registry and the generation settings.
_whole = as_whole
_real = as_real


def _int(value: object, what: str, *, minimum: int = 0, maximum: int = _MAX_INT) -> int:
    number = _whole(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a whole number, got {value!r}")
    if not minimum <= number <= maximum:
        raise InvalidInputError(f"{what} must be between {minimum} and {maximum}, got {number}")
    return number


def _setting(value: object, what: str, name: str) -> Any:
    """A generation setting (seed, steps, cfg, ...) within the pipeline's one set of limits."""
    try:
        return LIMITS[name].check(value, what)
    except InvalidSettingError as error:
        raise InvalidInputError(str(error)) from None


def _id(value: object, what: str) -> int:
    number = _whole(value)
    if number is None:
        raise InvalidInputError(f"{what} id must be a whole number, got {value!r}")
    return number


def _float(value: object, what: str, *, minimum: float, maximum: float = math.inf) -> float:
    number = _real(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a number, got {value!r}")
    if not minimum < number <= maximum:
        raise InvalidInputError(
            f"{what} must be above {minimum} and at most {maximum}, got {number}"
        )
    return number


def _choice(value: object, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise InvalidInputError(f"invalid {what} {value!r}: use one of {', '.join(allowed)}")
    return str(value)


def _sha256(value: object, what: str = "sha256") -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise InvalidInputError(f"invalid {what} {value!r}: expected 64 hexadecimal digits")
    return value.lower()


def _relative_path(value: object, what: str) -> str:
    """A path relative to the data root (DESIGN §7), in POSIX form."""
    if isinstance(value, PathLike):
        value = value.__fspath__()
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} must be a non-empty path, got {value!r}")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive or ".." in posix.parts:
        raise InvalidInputError(
            f"{what} {value!r} must be relative to the data root, without '..' parts"
        )
    return posix.as_posix()


def _json(value: object, what: str, expected: type) -> Any:
    if not isinstance(value, expected):
        raise InvalidInputError(f"{what} must be a {expected.__name__}, got {type(value).__name__}")
    try:
        # allow_nan=False: PostgreSQL's JSON type refuses NaN and Infinity.
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{what} cannot be stored as JSON: {error}") from None
    return value


def _naive_utc(moment: datetime) -> datetime:
    """The registry stores naive UTC datetimes (see models.DateTime)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _phash(value: object) -> str | None:
    """A perceptual hash as stored: 16 lower-case hex digits (64 bits), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _PHASH.fullmatch(value.lower()):
        raise InvalidInputError(f"invalid perceptual hash {value!r}: expected 16 hex digits")
    return value.lower()


def _non_negative(value: object, what: str) -> float:
    number = _real(value)
    if number is None:
        raise InvalidInputError(f"{what} must be a number, got {value!r}")
    if number < 0:
        raise InvalidInputError(f"{what} must not be negative, got {number}")
    return number
