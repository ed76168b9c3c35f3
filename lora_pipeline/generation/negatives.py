"""Rejection categories become negative prompt terms (user guide, Approve tab).

The table is the studio's default; a studio can replace the terms of any category with a JSON
object `{"category": ["term", ...]}`, given in the environment variable
`LORA_PIPELINE_NEGATIVE_TERMS` (a path to a JSON file, or the JSON itself) or in the file
`negative_terms.json` of the project home. Categories it leaves out keep their default terms.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lora_pipeline.config import Settings, env_name
from lora_pipeline.errors import PipelineError
from lora_pipeline.registry.commands import REJECTION_CATEGORIES

DEFAULT_NEGATIVE_TERMS: Mapping[str, tuple[str, ...]] = {
    "wrong_appearance": ("wrong colors", "wrong outfit", "inconsistent features"),
    "wrong_style": ("wrong art style",),
    "bad_quality": ("blurry", "low quality"),
    "not_solo": ("multiple characters", "crowd", "2girls", "2boys"),
    "wrong_pose": ("awkward pose", "unnatural pose"),
    "wrong_expression": ("wrong expression",),
}
NEGATIVE_TERMS_ENV = env_name("negative_terms")
NEGATIVE_TERMS_FILE = "negative_terms.json"

NegativeTable = Mapping[str, Sequence[str]]


class NegativeTableError(PipelineError, ValueError):
    """A custom negative-term table that cannot be used; the message says where and why."""


def parse_negative_table(text: str, origin: str) -> dict[str, tuple[str, ...]]:
    """The default table with the categories of the JSON object `text` replaced."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise NegativeTableError(f"{origin}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise NegativeTableError(f"{origin}: expected a JSON object {{category: [terms]}}")
    table = dict(DEFAULT_NEGATIVE_TERMS)
    for category, terms in data.items():
        if category not in REJECTION_CATEGORIES:
            raise NegativeTableError(
                f"{origin}: unknown category {category!r}; valid are "
                f"{', '.join(REJECTION_CATEGORIES)}"
            )
        if isinstance(terms, str) or not isinstance(terms, list):
            raise NegativeTableError(f"{origin}: {category} must map to a list of terms")
        if not all(isinstance(t, str) and t.strip() for t in terms):
            raise NegativeTableError(f"{origin}: every term of {category} must be non-empty text")
        table[category] = tuple(dict.fromkeys(t.strip() for t in terms))
    return table


def load_negative_table(path: Path) -> dict[str, tuple[str, ...]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise NegativeTableError(f"{path}: cannot read the negative-term table ({error})") from None
    return parse_negative_table(text, str(path))


def configured_negative_table(home: Path | None = None) -> Mapping[str, Sequence[str]]:
    """The table in force: the configured one (LORA_PIPELINE_NEGATIVE_TERMS), else the project
    home's file, else the default."""
    settings = Settings.current()
    configured = (settings.negative_terms or "").strip()
    if configured.startswith("{"):
        return parse_negative_table(configured, NEGATIVE_TERMS_ENV)
    if configured:
        return load_negative_table(Path(configured).expanduser())
    path = Path(home or settings.home) / NEGATIVE_TERMS_FILE
    return load_negative_table(path) if path.is_file() else DEFAULT_NEGATIVE_TERMS


def negative_terms_for(categories: Iterable[str], table: NegativeTable | None = None) -> list[str]:
    """Terms for the categories, in the order of the categories given, without repeats.

    Without a table, the configured one (`configured_negative_table`) is used.
    """
    if table is None:
        table = configured_negative_table()
    terms: list[str] = []
    for category in categories:
        for term in table.get(category, ()):
            if term not in terms:
                terms.append(term)
    return terms


def merge_negative_prompt(base: str, extra_terms: Iterable[str]) -> str:
    """Append terms to a comma-separated negative prompt, skipping ones already present."""
    parts = [p.strip() for p in base.split(",") if p.strip()]
    seen = {p.lower() for p in parts}
    for term in extra_terms:
        if term.lower() not in seen:
            parts.append(term)
            seen.add(term.lower())
    return ", ".join(parts)
