"""Which of the project's characters appear in a frame.

`Identifier` is what the classified_frames stage calls. Vision-language backends (LLaVA,
Ollama) ask a model and turn its free-text answer into candidate slugs with
`parse_character_answer`, which errs towards "no one": a frame wrongly attributed to a
character pollutes its dataset, while a frame wrongly skipped costs nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from lora_pipeline.errors import PipelineError


@dataclass(frozen=True)
class CharacterProfile:
    slug: str
    name: str
    description: str


@dataclass(frozen=True)
class Identification:
    """The candidate slugs recognised in one image, and the backend's answer that said so."""

    slugs: frozenset[str]
    raw_answer: str
    # How the answer was reached, in fields, from backends that can say (reference matching,
    # the combined identifier): method, scores, threshold. Kept in each crop's provenance so
    # the review app can show why a crop was assigned; not part of what the answer is.
    record: Mapping[str, Any] | None = field(default=None, compare=False)


@runtime_checkable
class Identifier(Protocol):
    """Says which candidates appear in each image; one Identification per image, in order.

    `name` is recorded on every frame it classifies (at most 64 characters). Raises
    IdentifierError when the backend itself fails (server down, model missing): the frames
    stay unclassified and a later run retries them.
    """

    name: str

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]: ...


class IdentifierError(PipelineError, RuntimeError):
    """An identification backend failed; the message is one line naming it and the reason."""


# Design prompts are tag lists for a diffusion model; the first few tags describe the look.
_DESCRIPTION_CHARS = 120


def short_description(design_prompt: str) -> str:
    """The start of a design prompt, cut at a comma, for naming a character to a VLM."""
    text = " ".join(design_prompt.split())
    if len(text) <= _DESCRIPTION_CHARS:
        return text
    cut = text.rfind(",", 0, _DESCRIPTION_CHARS)
    return text[: cut if cut > 0 else _DESCRIPTION_CHARS].rstrip(" ,")


def identification_question(candidates: Sequence[CharacterProfile]) -> str:
    """The question a vision-language model is asked about one image.

    It lists every candidate with a short description and asks for a JSON list, which
    `parse_character_answer` reads first; free text still parses when a model ignores that.
    """
    lines = [
        "Which of these anime characters appear in the image?",
        *(
            f"- {c.name} ({c.slug}): {short_description(c.description) or 'no description'}"
            for c in candidates
        ),
        'Answer only with a JSON list of the names of the characters you see, e.g. ["'
        + (candidates[0].name if candidates else "Name")
        + '"], or [] if none of them appears.',
    ]
    return "\n".join(lines)


def short_name(kind: str, model: str) -> str:
    """An identifier name for the registry (64 characters at most): kind and model."""
    label = model.rstrip("/").rsplit("/", 1)[-1] if "/" in model and len(model) > 40 else model
    return f"{kind}:{label}"[:64]


class SourceCharacterIdentifier:
    """Single-character mode: a source registered for one character shows that character.

    Used when a source (an uploaded video, a character's trailer) belongs to one character, so
    no model is needed; a frame is skipped if that character is not among the candidates.
    """

    name = "source_character"

    def __init__(self, character_slug: str) -> None:
        if not character_slug.strip():
            raise ValueError("SourceCharacterIdentifier needs the source's character slug")
        self.character_slug = character_slug

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]:
        if self.character_slug in {candidate.slug for candidate in candidates}:
            found = Identification(
                frozenset({self.character_slug}),
                f"single-character source: frames belong to {self.character_slug}",
            )
        else:
            found = Identification(
                frozenset(),
                f"single-character source: {self.character_slug} is not among the candidate "
                "characters, frame skipped",
            )
        return [found for _ in images]


# Words that make a statement about a character negative or uncertain. Conservative on
# purpose: "Mario without his hat" loses a frame, which is cheap; a wrong frame is not.
_NEGATION = re.compile(
    r"\b(?:not|no|none|never|neither|nor|without|absent|missing|nobody|nothing|"
    r"isn'?t|aren'?t|wasn'?t|weren'?t|doesn'?t|don'?t|didn'?t|cannot|can'?t|couldn'?t|"
    r"except|besides|excluding|other\s+than|apart\s+from|instead\s+of|rather\s+than|"
    r"unlikely|unclear|unsure|uncertain|maybe|perhaps|possibly|probably|might|could|"
    r"resembles?|looks?\s+like|similar\s+to)\b|n't\b",
    re.IGNORECASE,
)
# Clause boundaries; a negation reaches only the mentions of its own clause. Commas, colons,
# dashes and brackets are not boundaries: "Luigi: no", "Luigi, no", "Luigi (no)" must stay
# negative, at the price of "Mario, not Luigi" naming no one.
_CLAUSE_BREAK = re.compile(
    r"[\n.;!?]|\b(?:but|however|whereas|although|though|while|yet)\b", re.IGNORECASE
)
# "only Mario", "just the character Mario", "Mario alone", "Mario is the only one".
_ONLY_BEFORE = re.compile(
    r"\b(?:only|just|solely|exclusively)\s+(?:the\s+)?(?:character\s+)?$", re.IGNORECASE
)
_ONLY_AFTER = re.compile(r"^\s*(?:only|alone|is\s+the\s+only)\b", re.IGNORECASE)
_PRESENT_KEYS = ("present", "visible", "appears", "in_image", "detected")
_NAME_KEYS = ("slug", "name", "character", "id")
_LIST_KEYS = ("characters", "present", "characters_present", "names", "slugs", "answer")
_TRUE_WORDS = frozenset({"yes", "true", "present", "visible", "y"})


def parse_character_answer(answer: str, candidates: Sequence[CharacterProfile]) -> frozenset[str]:
    """The candidate slugs that a model's free-text (or JSON) answer says are present."""
    if not answer or not answer.strip() or not candidates:
        return frozenset()
    structured = _find_json(answer)
    if structured is not None:
        return _from_json(structured, candidates)
    return _from_text(answer, candidates)


def _from_text(text: str, candidates: Sequence[CharacterProfile]) -> frozenset[str]:
    mentions = _find_mentions(text, candidates)
    if not mentions:
        return frozenset()
    blocked = [(start, end) for start, end, _ in mentions]
    breaks = [m.start() for m in _CLAUSE_BREAK.finditer(text) if not _inside(m.start(), blocked)]
    positive: list[tuple[str, bool]] = []
    for start, end, slug in mentions:
        clause_start = max((b for b in breaks if b < start), default=-1) + 1
        clause_end = min((b for b in breaks if b >= end), default=len(text))
        if clause_end < len(text) and text[clause_end] == "?":
            continue  # a question ("is it Mario?") asserts nothing
        clause = _without_mentions(text, clause_start, clause_end, blocked)
        if _NEGATION.search(clause):
            continue
        positive.append((slug, _is_exclusive(text[clause_start:start], text[end:clause_end])))
    # "Of Mario, Luigi and Peach, only Mario appears": the "only" clause overrides an echo.
    exclusive = {slug for slug, only in positive if only}
    return frozenset(exclusive or {slug for slug, _ in positive})


def _is_exclusive(before: str, after: str) -> bool:
    return bool(_ONLY_BEFORE.search(before) or _ONLY_AFTER.match(after))


def _find_mentions(text: str, candidates: Sequence[CharacterProfile]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, slug) spans; the longest alias wins ("Dark Link" > "Link")."""
    found: list[tuple[int, int, str]] = []
    for candidate in candidates:
        for alias in _aliases(candidate):
            for match in alias.finditer(text):
                found.append((match.start(), match.end(), candidate.slug))
    found.sort(key=lambda span: (-(span[1] - span[0]), span[0]))
    chosen: list[tuple[int, int, str]] = []
    for span in found:
        if not any(span[0] < end and start < span[1] for start, end, _ in chosen):
            chosen.append(span)
    return sorted(chosen)


def _aliases(candidate: CharacterProfile) -> list[re.Pattern[str]]:
    names = {candidate.slug, candidate.name}
    patterns = []
    for name in names:
        words = [w for w in re.split(r"[\s_-]+", name.strip()) if w]
        if words:
            body = r"[\s_-]+".join(re.escape(word) for word in words)
            patterns.append(re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE))
    return patterns


def _inside(position: int, spans: Iterable[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def _without_mentions(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> str:
    # Names such as "No-Face" must not count as negations of themselves.
    chars = list(text[start:end])
    for span_start, span_end in spans:
        for index in range(max(span_start, start), min(span_end, end)):
            chars[index - start] = " "
    return "".join(chars)


def _find_json(text: str) -> Any | None:
    """The first JSON list or object in the text that looks like an answer, else None."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and all(isinstance(item, str | dict) for item in value)
        ):
            return value
    return None


def _from_json(value: Any, candidates: Sequence[CharacterProfile]) -> frozenset[str]:
    if value is None or isinstance(value, bool | int | float):
        return frozenset()
    if isinstance(value, str):
        return _from_text(value, candidates)
    if isinstance(value, list):
        return frozenset().union(*(_from_json(item, candidates) for item in value))
    if not isinstance(value, dict):
        return frozenset()
    lowered = {str(key).lower(): item for key, item in value.items()}
    for key in _LIST_KEYS:
        if key in lowered and not isinstance(lowered[key], bool):
            return _from_json(lowered[key], candidates)
    for key in _NAME_KEYS:
        if isinstance(lowered.get(key), str):
            flags = [lowered[k] for k in _PRESENT_KEYS if k in lowered]
            if flags and not all(_truthy(flag) for flag in flags):
                return frozenset()
            return _from_text(lowered[key], candidates)
    # {"Mario": true, "Luigi": false}: names mapped to a verdict.
    present = [str(key) for key, verdict in value.items() if _truthy(verdict)]
    return _from_text("\n".join(present), candidates)


def _truthy(verdict: Any) -> bool:
    if isinstance(verdict, bool):
        return verdict
    if isinstance(verdict, int | float):
        return verdict > 0.5
    if isinstance(verdict, str):
        return verdict.strip().lower() in _TRUE_WORDS
    return False


# --- configuration ------------------------------------------------------------------------------

IDENTIFIER_KINDS = ("llava", "ollama", "reference", "ccip")
# Matching kinds compare with the character's approved images; the others ask a VLM.
MATCHING_KINDS = ("reference", "ccip")
COMBINED_SEPARATOR = "+"


@dataclass(frozen=True)
class IdentifierSpec:
    """A parsed identifier setting: `llava:<folder|hub id>`, `ollama:<url>#<model>`,
    `reference:<folder|hub id>` or `ccip:<features.onnx>[#<metrics.onnx>]`."""

    kind: str
    target: str
    model: str = ""


def parse_identifier_spec(spec: str) -> IdentifierSpec:
    kind, _, rest = spec.strip().partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if kind not in IDENTIFIER_KINDS or not rest:
        raise ValueError(
            f"invalid identifier {spec!r}: use llava:<folder or hub id>, "
            "ollama:<url>#<model>, reference:<folder or hub id> or ccip:<model.onnx>"
        )
    if kind != "ollama":
        return IdentifierSpec(kind, rest)
    url, _, model = rest.partition("#")
    if not url.strip() or not model.strip():
        raise ValueError(f"invalid Ollama identifier {spec!r}: use ollama:<url>#<model>")
    return IdentifierSpec(kind, url.strip(), model.strip())


def split_combined_spec(spec: str) -> tuple[str, str] | None:
    """`<matching spec>+<vlm spec>` (reference matching first, the VLM otherwise) → the two
    specs; None for a single identifier. Each part is validated by `parse_identifier_spec`."""
    if COMBINED_SEPARATOR not in spec:
        return None
    matching, _, vlm = spec.partition(COMBINED_SEPARATOR)
    first, second = parse_identifier_spec(matching), parse_identifier_spec(vlm)
    if first.kind not in MATCHING_KINDS or second.kind in MATCHING_KINDS:
        raise ValueError(
            f"invalid combined identifier {spec!r}: use <reference:… or ccip:…>+<llava:… or "
            "ollama:…>"
        )
    return matching.strip(), vlm.strip()
