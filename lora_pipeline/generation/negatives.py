"""Rejection categories become negative prompt terms (user guide, Approve tab).

The table is the studio's default; a project can pass its own mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

DEFAULT_NEGATIVE_TERMS: Mapping[str, tuple[str, ...]] = {
    "wrong_appearance": ("wrong colors", "wrong outfit", "inconsistent features"),
    "wrong_style": ("wrong art style",),
    "bad_quality": ("blurry", "low quality"),
    "not_solo": ("multiple characters", "crowd", "2girls", "2boys"),
    "wrong_pose": ("awkward pose", "unnatural pose"),
    "wrong_expression": ("wrong expression",),
}


def negative_terms_for(
    categories: Iterable[str], table: Mapping[str, Sequence[str]] = DEFAULT_NEGATIVE_TERMS
) -> list[str]:
    """Terms for the categories, in table order of the categories given, without repeats."""
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
