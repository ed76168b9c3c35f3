"""Concepts of a caption from a taxonomy: pose, setting, lighting, clothing, attributes…

A taxonomy is a JSON object: category → list of concepts, each a term (`"dress"`) or
`{"name": "natural", "match": ["sunlight", "daylight"]}` when other words say the same. Terms
match whole words, case-insensitively, with `_`, `-` and spaces alike, so the danbooru tags of a
tagger (`blonde_hair`) and plain English (`blonde hair`) both match. The single-valued categories
(pose, setting, lighting) take the concept mentioned first in the caption; the others take all.
Keys that start with `_` are comments. Projects can ship their own taxonomy (seed 002's cosplay
example: costume_type, costume_elements, setting).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lora_pipeline.dataset.versions import DatasetError

DEFAULT_TAXONOMY_FILE = "taxonomy_default.json"
SINGLE_VALUED = ("pose", "setting", "lighting")
TOP_CONCEPTS = 10
# Frequencies as in seed 002's metadata.json: two decimals.
_FREQUENCY_DECIMALS = 2
_CATEGORY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_RESERVED = frozenset({"raw_caption", "concepts"})


class TaxonomyError(DatasetError):
    """A taxonomy file is missing or does not have the expected shape."""


@dataclass(frozen=True)
class Concept:
    name: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Taxonomy:
    """Categories in file order, each with its concepts in file order."""

    name: str
    categories: dict[str, tuple[Concept, ...]]


def normalize_text(text: str) -> str:
    """Lower case, `_` and `-` as spaces, single spaces: the form terms are matched in."""
    return " ".join(re.sub(r"[_\-]+", " ", text.casefold()).split())


def concept_name(term: str) -> str:
    """The snake_case name of a concept, as seed 002 writes them (`blonde_hair`)."""
    return normalize_text(term).replace(" ", "_")


def load_taxonomy(path: Path | str | None = None) -> Taxonomy:
    """The taxonomy in `path`, or the packaged default when no path is given."""
    if path is None:
        source = resources.files("lora_pipeline.dataset") / DEFAULT_TAXONOMY_FILE
        return parse_taxonomy(json.loads(source.read_text(encoding="utf-8")), "default")
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaxonomyError(f"taxonomy file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaxonomyError(f"cannot read taxonomy {path}: {error}") from None
    return parse_taxonomy(data, path.name)


def parse_taxonomy(data: Any, name: str) -> Taxonomy:
    if not isinstance(data, dict):
        raise TaxonomyError(f"taxonomy {name} must be a JSON object of categories")
    categories: dict[str, tuple[Concept, ...]] = {}
    for category, entries in data.items():
        if str(category).startswith("_"):
            continue
        if not _CATEGORY.fullmatch(str(category)) or category in _RESERVED:
            raise TaxonomyError(
                f"taxonomy {name}: category {category!r} must be a lower-case identifier "
                "other than 'raw_caption' and 'concepts'"
            )
        if not isinstance(entries, list):
            raise TaxonomyError(f"taxonomy {name}: category {category!r} must be a list")
        categories[category] = tuple(_concept(entry, f"{name}.{category}") for entry in entries)
    if not categories:
        raise TaxonomyError(f"taxonomy {name} has no categories")
    return Taxonomy(name, categories)


def extract_concepts(text: str, taxonomy: Taxonomy) -> dict[str, Any]:
    """Seed 002's per-image record, less raw_caption: concepts, then one key per category."""
    normalized = normalize_text(text)
    found: list[tuple[int, int, str, str]] = []  # (position, order, category, concept name)
    order = 0
    for category, concepts in taxonomy.categories.items():
        for concept in concepts:
            match = concept.pattern.search(normalized)
            if match:
                found.append((match.start(), order, category, concept.name))
            order += 1
    found.sort()
    record: dict[str, Any] = {"concepts": _unique(name for _, _, _, name in found)}
    for category in taxonomy.categories:
        names = [name for _, _, cat, name in found if cat == category]
        record[category] = (names[0] if names else None) if category in SINGLE_VALUED else names
    return record


def top_concepts(
    per_image: Sequence[Sequence[str]], limit: int = TOP_CONCEPTS
) -> list[dict[str, Any]]:
    """The most common concepts: count of images and share of all images, most common first."""
    total = len(per_image)
    counts = Counter(name for names in per_image for name in set(names))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [
        {
            "concept": name,
            "count": count,
            "frequency": round(count / total, _FREQUENCY_DECIMALS),
        }
        for name, count in ranked
    ]


def _concept(entry: Any, where: str) -> Concept:
    if isinstance(entry, str):
        name, terms = entry, [entry]
    elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        name, terms = entry["name"], entry.get("match", [entry["name"]])
        unknown = sorted(set(entry) - {"name", "match"})
        if unknown:
            raise TaxonomyError(f"taxonomy {where}: unknown key(s) {unknown}")
    else:
        raise TaxonomyError(f"taxonomy {where}: {entry!r:.60} is neither a term nor a named entry")
    if not isinstance(terms, list) or not terms or not all(isinstance(t, str) for t in terms):
        raise TaxonomyError(f"taxonomy {where}: 'match' of {name!r} must be a list of terms")
    normalized = sorted({normalize_text(t) for t in terms if normalize_text(t)}, key=len)
    if not normalized or not concept_name(name):
        raise TaxonomyError(f"taxonomy {where}: concept {name!r} has no usable term")
    # Longest term first, so "flower field" wins over "field" at the same place.
    alternatives = "|".join(re.escape(term) for term in reversed(normalized))
    return Concept(concept_name(name), re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"))


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
