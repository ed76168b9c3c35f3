"""Prompt advisors: after repeated structured rejections, propose a refined design prompt.

Two advisors answer the same question (`AdviceRequest` → `Advice`):
- `EchoBrainAdvisor` asks the studio's Echo Brain service over HTTP
  (`POST {url}/api/echo/enhance` with `{"prompt", "context"}`, answered by
  `{"suggestion", "rationale"}`); it is used when `LORA_PIPELINE_ECHO_BRAIN_URL` is set.
- `BuiltinAdvisor` works from the accumulated categories and notes alone, so a studio without
  Echo Brain still gets suggestions, and an offline Echo Brain never blocks one.
The suggestion becomes a `prompt_suggestions` row that the review app shows, to be accepted
with one click; nothing changes the design prompt without a person.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from lora_pipeline.config import Settings, env_name
from lora_pipeline.errors import PipelineError
from lora_pipeline.generation.echo_brain import EchoBrainClient, EchoBrainError
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.db import Registry

ECHO_BRAIN_URL_ENV = env_name("echo_brain_url")
MIN_STRUCTURED_REJECTIONS = 3
# A note phrase said in this many rejections becomes part of the prompt.
FREQUENT_NOTE_COUNT = 2
MAX_PHRASE_WORDS = 6
APPEARANCE_WEIGHT = 1.2
MAX_WEIGHT = 1.5

QUALITY_TERMS = ("masterpiece", "best quality", "highly detailed")
POSE_TERMS = ("natural pose",)
EXPRESSION_TERMS = ("expressive face",)
DEFAULT_STYLE_TERMS = ("consistent art style", "on model")
_APPEARANCE_TEXT = """
    hair eyes eye eyebrows skin ears tail horns wings outfit dress shirt jacket coat
    raincoat hoodie sweater skirt shorts pants trousers uniform kimono armor armour hat cap
    helmet hood scarf gloves boots shoes socks glasses ribbon bow necklace earrings
    freckles scar mustache beard ponytail twintails braid bangs bob wearing red orange
    yellow green blue teal cyan purple violet pink white black grey gray brown blonde
    silver golden gold
"""
APPEARANCE_WORDS = frozenset(_APPEARANCE_TEXT.split())
_WEIGHTED = re.compile(r"^\((?P<term>.+):(?P<weight>\d+(?:\.\d+)?)\)$")
# "hair should be teal", "should have a scarf", "needs X": what the reviewer finds missing.
_SHOULD = re.compile(r"^(?P<subject>.*?)\s*\b(?:should|must)\s+(?P<verb>be|have)\s+(?P<x>.+)$")
_NEEDS = re.compile(r"^(?:needs?|wants?)\s+(?P<x>.+)$")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_PRONOUNS = ("", "she", "he", "it", "they", "character", "the character")
_X_NOT_Y = re.compile(r"^(?P<x>.+?)\s*,?\s+not\s+.+$")
_PHRASE_SPLIT = re.compile(r"[.;!?\n]+")

Log = Callable[[str], None]


class AdvisorError(PipelineError, RuntimeError):
    """An advisor that could not answer; the message says which and why."""


@dataclass(frozen=True)
class Rejection:
    categories: tuple[str, ...]
    notes: str = ""


@dataclass(frozen=True)
class AdviceRequest:
    character: str
    design_prompt: str
    rejections: tuple[Rejection, ...]
    project: str = ""
    style_prompt: str = ""

    def category_counts(self) -> Counter[str]:
        return Counter(c for r in self.rejections for c in r.categories)


@dataclass(frozen=True)
class Advice:
    suggested_prompt: str
    rationale: str
    advisor: str


class PromptAdvisor(Protocol):
    name: str

    def advise(self, request: AdviceRequest) -> Advice | None:
        """A refined design prompt, or None when there is nothing to improve."""
        ...


# --- built-in advisor ---------------------------------------------------------------------------


@dataclass
class _Draft:
    parts: list[str]
    changes: list[str] = field(default_factory=list)

    def has(self, term: str) -> bool:
        wanted = term.lower()
        return any(_plain(p).lower() == wanted for p in self.parts)

    def add(self, terms: Sequence[str], why: str, front: bool = False) -> None:
        new = [t for t in terms if not self.has(t)]
        if not new:
            return
        self.parts = new + self.parts if front else self.parts + new
        self.changes.append(f"added {', '.join(repr(t) for t in new)} ({why})")


def _plain(part: str) -> str:
    match = _WEIGHTED.match(part)
    return match["term"] if match else part


def _is_appearance(part: str) -> bool:
    words = re.findall(r"[a-z]+", _plain(part).lower())
    return any(w in APPEARANCE_WORDS for w in words)


def _emphasised(part: str) -> str:
    match = _WEIGHTED.match(part)
    if match:
        weight = min(MAX_WEIGHT, float(match["weight"]) + 0.1)
        return f"({match['term']}:{weight:.1f})"
    return f"({part}:{APPEARANCE_WEIGHT:.1f})"


def _note_phrases(notes: str) -> list[str]:
    phrases = []
    for raw in _PHRASE_SPLIT.split(notes.lower()):
        phrase = " ".join(raw.replace(",", " , ").split()).replace(" , ", ", ").strip(" ,")
        if phrase:
            phrases.append(phrase)
    return phrases


def _wished_term(phrase: str) -> str | None:
    """What a note asks for: 'hair should be teal' → 'teal hair'; 'should have a red scarf' →
    'red scarf'; 'teal hair, not blue' → 'teal hair'; None for a complaint ('too dark')."""
    match = _SHOULD.match(phrase)
    if match:
        subject, wanted = match["subject"].strip(" ,"), match["x"]
        if match["verb"] == "be" and subject not in _PRONOUNS:
            wanted = f"{wanted} {_ARTICLE.sub('', subject)}"
    elif (match := _NEEDS.match(phrase)) or (match := _X_NOT_Y.match(phrase)):
        wanted = match["x"]
    else:
        return None
    return _ARTICLE.sub("", wanted.strip(" ,")) or None


def _short(phrase: str) -> bool:
    return 0 < len(phrase.split()) <= MAX_PHRASE_WORDS


class BuiltinAdvisor:
    """Refines the design prompt from the categories and notes of the rejections.

    - wrong_appearance: the appearance terms (hair, eyes, outfit, colours) move to the front
      with more weight, `(teal hair:1.2)`, one step more each time, at most 1.5;
    - not_solo: 'solo' first; wrong_style: the project's style terms (or generic ones);
      bad_quality, wrong_pose, wrong_expression: the usual positive terms for them;
    - notes: what a note asks for ('should have a red scarf', 'teal hair, not blue') is added,
      and so is any short phrase that several rejections repeat.
    """

    name = "builtin"

    def advise(self, request: AdviceRequest) -> Advice | None:
        draft = _Draft([p.strip() for p in request.design_prompt.split(",") if p.strip()])
        counts = request.category_counts()
        if counts["wrong_appearance"]:
            self._strengthen_appearance(draft, counts["wrong_appearance"])
        if counts["not_solo"]:
            draft.add(["solo"], f"not_solo ×{counts['not_solo']}", front=True)
        if counts["wrong_style"]:
            style = [s.strip() for s in request.style_prompt.split(",") if s.strip()]
            draft.add(style or list(DEFAULT_STYLE_TERMS), f"wrong_style ×{counts['wrong_style']}")
        for category, terms in (
            ("bad_quality", QUALITY_TERMS),
            ("wrong_pose", POSE_TERMS),
            ("wrong_expression", EXPRESSION_TERMS),
        ):
            if counts[category]:
                draft.add(list(terms), f"{category} ×{counts[category]}")
        self._add_note_phrases(draft, request.rejections)
        suggested = ", ".join(draft.parts)
        if not draft.changes or suggested == request.design_prompt.strip():
            return None
        summary = ", ".join(f"{c} ×{n}" for c, n in counts.most_common())
        rationale = f"{len(request.rejections)} rejections ({summary}): " + "; ".join(draft.changes)
        return Advice(suggested, rationale, self.name)

    @staticmethod
    def _strengthen_appearance(draft: _Draft, times: int) -> None:
        appearance = [p for p in draft.parts if _is_appearance(p)]
        if not appearance and draft.parts:
            appearance = draft.parts[:1]  # the lead description is the character's look
        if not appearance:
            return
        others = [p for p in draft.parts if p not in appearance]
        draft.parts = [_emphasised(p) for p in appearance] + others
        draft.changes.append(
            f"emphasised {', '.join(_plain(p) for p in appearance)} (wrong_appearance ×{times})"
        )

    @staticmethod
    def _add_note_phrases(draft: _Draft, rejections: Sequence[Rejection]) -> None:
        wished: list[str] = []
        repeated: Counter[str] = Counter()
        for rejection in rejections:
            phrases = set(_note_phrases(rejection.notes))
            for phrase in phrases:
                term = _wished_term(phrase)
                if term and _short(term):
                    wished.append(term)
                elif _short(phrase) and not phrase.startswith(("too ", "no ", "not ")):
                    repeated[phrase] += 1
        frequent = [p for p, n in repeated.items() if n >= FREQUENT_NOTE_COUNT]
        if wished:
            draft.add(list(dict.fromkeys(wished)), "asked for in the notes")
        if frequent:
            draft.add(sorted(frequent), f"repeated in {FREQUENT_NOTE_COUNT}+ notes")


# --- Echo Brain -----------------------------------------------------------------------------------


class EchoBrainAdvisor:
    """Asks Echo Brain: `POST {url}/api/echo/enhance` `{"prompt", "context"}` →
    `{"suggestion", "rationale"}`; an empty suggestion means nothing to improve."""

    name = "echo_brain"

    def __init__(
        self, url: str, timeout_s: float = 15.0, client: httpx.Client | None = None
    ) -> None:
        try:
            self._echo = EchoBrainClient(url, timeout_s, client)
        except EchoBrainError as error:
            raise AdvisorError(str(error)) from None
        self.url = self._echo.url

    def advise(self, request: AdviceRequest) -> Advice | None:
        try:
            enhancement = self._echo.enhance(request.design_prompt, _context(request))
        except EchoBrainError as error:
            raise AdvisorError(str(error)) from None
        best = enhancement.suggestions[0] if enhancement.suggestions else ""
        if not best or best == request.design_prompt.strip():
            return None
        return Advice(best, enhancement.rationale, self.name)


def _context(request: AdviceRequest) -> dict[str, Any]:
    return {
        "character": request.character,
        "project": request.project,
        "style_prompt": request.style_prompt,
        "category_counts": dict(request.category_counts()),
        "rejections": [
            {"categories": list(r.categories), "notes": r.notes} for r in request.rejections
        ],
    }


def configured_advisors(url: str | None = None) -> list[PromptAdvisor]:
    """Echo Brain first when configured (`url`, else LORA_PIPELINE_ECHO_BRAIN_URL), then the
    built-in advisor as the fallback."""
    advisors: list[PromptAdvisor] = []
    url = (url or Settings.current().echo_brain_url or "").strip()
    if url:
        advisors.append(EchoBrainAdvisor(url))
    advisors.append(BuiltinAdvisor())
    return advisors


# --- from the registry to a suggestion --------------------------------------------------------


def propose_refinement(
    registry: Registry,
    character_slug: str,
    advisors: Sequence[PromptAdvisor],
    log: Log,
    min_rejections: int = MIN_STRUCTURED_REJECTIONS,
) -> int | None:
    """A new open prompt suggestion when the character has `min_rejections` structured
    rejections since its last suggestion; returns its id, or None.

    The first advisor that answers wins; one that fails is logged and the next one is asked.
    """
    request = _advice_request(registry, character_slug, min_rejections)
    if request is None:
        return None
    for advisor in advisors:
        try:
            advice = advisor.advise(request)
        except AdvisorError as error:
            log(f"prompt advisor {advisor.name} failed: {error}")
            continue
        if advice is None:
            log(f"prompt advisor {advisor.name} has no refinement for {character_slug}")
            continue
        with registry.session() as session:
            character = commands.get_character(session, character_slug)
            if character.design_prompt.strip() != request.design_prompt.strip():
                log(f"design prompt of {character_slug} changed meanwhile; no suggestion")
                return None
            row = suggestions.add_prompt_suggestion(
                session, character.id, advice.suggested_prompt, advice.rationale, advice.advisor
            )
            suggestion_id = row.id
        log(f"prompt suggestion {suggestion_id} for {character_slug} by {advice.advisor}")
        return suggestion_id
    return None


def _advice_request(
    registry: Registry, character_slug: str, min_rejections: int
) -> AdviceRequest | None:
    with registry.session(readonly=True) as session:
        character = commands.get_character(session, character_slug)
        since = suggestions.last_suggestion_time(session, character.id)
        feedback = suggestions.structured_rejections(session, character.id, since)
        if len(feedback) < min_rejections:
            return None
        return AdviceRequest(
            character=character.name,
            design_prompt=character.design_prompt,
            rejections=tuple(Rejection(tuple(f.categories), f.notes) for f in feedback),
            project=character.project.name,
            style_prompt=character.project.style_prompt,
        )
