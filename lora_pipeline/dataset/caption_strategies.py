"""Caption strategies: what follows the trigger word in each image's caption.

- `design`: the character's design prompt (the same words for every image);
- `tags`: a WD14-style tagger's tags for the image (`blonde_hair` → `blonde hair`);
- `vlm`: a description from a vision-language model (a `Captioner`), cleaned into one line of
  comma-separated parts; the trigger word is taken out of it (the strategy puts it first), and
  an image the model says nothing usable about gets the design prompt instead when no other
  part of the strategy describes it, so that no caption is the trigger word alone;
- combinations in the order given: `design+tags`, `tags+vlm`, `design+tags+vlm`…;
- `auto`: `design`, plus `tags` when a tagger is configured.

Tags that every image of the character shares (from three images on) are left out of the
captions: the trigger word then absorbs them, which is what makes it call up the character's
look. Blacklisted tags (watermarks, signatures…) are left out too, and so are the tagger's
character tags unless asked for, since the trigger word stands for the character. Concepts
are extracted from the unpruned text with a taxonomy. Everything lands in `captions/`:
`<stem>.txt` per image and `captions.json` with the tags, concepts and settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from lora_pipeline.dataset.captions import (
    CAPTIONS_DIRNAME,
    CaptionError,
    distinct_parts,
    load_captions,
    starts_with_word,
    write_captions,
)
from lora_pipeline.dataset.concepts import (
    TOP_CONCEPTS,
    Taxonomy,
    extract_concepts,
    load_taxonomy,
    top_concepts,
)
from lora_pipeline.dataset.versions import IMAGES_DIRNAME, validate_manifest
from lora_pipeline.files import atomic_write_text
from lora_pipeline.media.images import InvalidImageError, load_image
from lora_pipeline.registry.commands import validate_trigger_word
from lora_pipeline.registry.errors import InvalidInputError
from lora_pipeline.vision.captioner import (
    Captioner,
    CaptionerError,
    caption_images,
    clean_caption,
)
from lora_pipeline.vision.tagger import TagScores

STRATEGY_PARTS = ("design", "tags", "vlm")
AUTO_STRATEGY = "auto"
CAPTIONS_JSON = "captions.json"
CAPTION_SET_VERSION = 1
PRUNE_MIN_IMAGES = 3
# Marks that say nothing about the character and should not be learned with it.
DEFAULT_TAG_BLACKLIST = (
    "signature",
    "watermark",
    "artist name",
    "username",
    "twitter username",
    "web address",
    "dated",
    "commentary",
    "jpeg artifacts",
)
_IMAGE_CHUNK = 16


class Tagger(Protocol):
    """What the `tags` strategy needs from a tagger (vision.tagger.OnnxTagger is one)."""

    name: str

    def tag(self, images: Sequence[Image.Image]) -> list[TagScores]: ...


def parse_strategy(text: str | None, *, tagger_available: bool) -> tuple[str, ...]:
    """The parts of a strategy string such as `design+tags`; `auto` picks from what exists."""
    cleaned = (text or AUTO_STRATEGY).strip().lower()
    if cleaned == AUTO_STRATEGY:
        return ("design", "tags") if tagger_available else ("design",)
    parts = tuple(part.strip() for part in cleaned.split("+"))
    unknown = [part for part in parts if part not in STRATEGY_PARTS]
    if unknown or len(set(parts)) != len(parts):
        raise CaptionError(
            f"caption strategy {text!r} must be 'auto' or parts among {STRATEGY_PARTS} joined "
            "by '+', each once (e.g. 'design+tags')"
        )
    return parts


def format_tag(tag: str) -> str:
    """A tagger tag as caption text: underscores become spaces, except in kaomoji like `^_^`."""
    tag = tag.strip()
    if len(tag) > 3:
        tag = tag.replace("_", " ")
    return " ".join(tag.split())


@dataclass
class CaptionPlan:
    strategy: tuple[str, ...]
    design_prompt: str = ""
    tagger: Tagger | None = None
    captioner: Captioner | None = None
    taxonomy: Taxonomy | None = None
    blacklist: Sequence[str] = DEFAULT_TAG_BLACKLIST
    prune_shared_tags: bool = True
    include_character_tags: bool = False
    top_concepts: int = TOP_CONCEPTS


@dataclass
class ImageCaption:
    caption: str
    raw_caption: str
    tags: list[str] = field(default_factory=list)
    character_tags: list[str] = field(default_factory=list)
    rating: str | None = None
    vlm_caption: str | None = None
    concepts: dict[str, Any] = field(default_factory=dict)
    # Every tag the tagger gave above its threshold, with its score (before pruning).
    tag_scores: dict[str, float] = field(default_factory=dict)


@dataclass
class CaptionSet:
    """Every image's caption and what it was made from; `captions.json` holds it."""

    strategy: str
    trigger_word: str
    tagger: str | None
    captioner: str | None
    taxonomy: str
    absorbed_tags: list[str]
    top_concepts: list[dict[str, Any]]
    images: dict[str, ImageCaption]

    @property
    def captions(self) -> dict[str, str]:
        return {name: image.caption for name, image in self.images.items()}

    def to_json(self) -> str:
        data = {"schema_version": CAPTION_SET_VERSION, **asdict(self)}
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@dataclass
class _Observation:
    tags: TagScores | None = None
    vlm: str | None = None


def caption_dataset(version_dir: Path, manifest: dict[str, Any], plan: CaptionPlan) -> CaptionSet:
    """Caption every image of a published version and write `captions/`."""
    validate_manifest(manifest)
    trigger = _checked_trigger(manifest["trigger_word"])
    _check_sources(plan)
    version_dir = Path(version_dir)
    observations = _observe(version_dir, manifest, plan)
    taxonomy = plan.taxonomy or default_taxonomy()
    blacklist = {format_tag(tag).casefold() for tag in plan.blacklist}
    tag_lists = {name: _caption_tags(obs, plan, blacklist) for name, obs in observations.items()}
    absorbed = _shared_tags(tag_lists) if plan.prune_shared_tags and "tags" in plan.strategy else []
    absorbed_keys = {tag.casefold() for tag in absorbed}
    images: dict[str, ImageCaption] = {}
    for name, observation in observations.items():
        kept = [tag for tag in tag_lists[name] if tag.casefold() not in absorbed_keys]
        images[name] = _image_caption(trigger, plan, observation, kept, taxonomy)
    written = write_captions(version_dir, manifest, {n: i.caption for n, i in images.items()})
    for name, caption in written.items():
        images[name].caption = caption
    caption_set = CaptionSet(
        strategy="+".join(plan.strategy),
        trigger_word=trigger,
        tagger=plan.tagger.name if plan.tagger and "tags" in plan.strategy else None,
        captioner=plan.captioner.name if plan.captioner and "vlm" in plan.strategy else None,
        taxonomy=taxonomy.name,
        absorbed_tags=absorbed,
        top_concepts=top_concepts(
            [i.concepts["concepts"] for i in images.values()], plan.top_concepts
        ),
        images=images,
    )
    atomic_write_text(version_dir / CAPTIONS_DIRNAME / CAPTIONS_JSON, caption_set.to_json())
    return caption_set


def preview_captions(
    images: Sequence[Image.Image], trigger_word: str, plan: CaptionPlan
) -> list[str]:
    """The captions the strategy gives a few images, as `caption_dataset` makes them but without
    a published version (the Train tab's preview). Tags shared by every image are not pruned:
    that needs the whole dataset, so the real captions can be shorter."""
    trigger = _checked_trigger(trigger_word)
    _check_sources(plan)
    observations = [_Observation() for _ in images]
    names = [f"image {number}" for number in range(1, len(images) + 1)]
    if "tags" in plan.strategy and images:
        results = plan.tagger.tag(list(images))
        if len(results) != len(images):
            raise CaptionError(f"tagger {plan.tagger.name!r} returned {len(results)} results")
        for observation, result in zip(observations, results, strict=True):
            observation.tags = result
    if "vlm" in plan.strategy and images:
        for observation, text in zip(
            observations, _vlm_texts(plan.captioner, names, list(images)), strict=True
        ):
            observation.vlm = clean_caption(text) or None
    taxonomy = plan.taxonomy or default_taxonomy()
    blacklist = {format_tag(tag).casefold() for tag in plan.blacklist}
    return [
        _image_caption(
            trigger, plan, observation, _caption_tags(observation, plan, blacklist), taxonomy
        ).caption
        for observation in observations
    ]


def load_caption_set(version_dir: Path, manifest: dict[str, Any]) -> CaptionSet:
    """Read back `captions/captions.json`; captions written without one get concepts now."""
    captions = load_captions(version_dir, manifest)
    path = Path(version_dir) / CAPTIONS_DIRNAME / CAPTIONS_JSON
    if not path.is_file():
        return caption_set_from_captions(manifest["trigger_word"], captions)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("schema_version")
        data["images"] = {name: ImageCaption(**image) for name, image in data["images"].items()}
        caption_set = CaptionSet(**data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise CaptionError(f"cannot read {path}: {error}") from None
    if caption_set.captions != captions:
        raise CaptionError(f"{path} does not match the caption files beside it")
    return caption_set


def caption_set_from_captions(
    trigger_word: str, captions: dict[str, str], taxonomy: Taxonomy | None = None
) -> CaptionSet:
    """A CaptionSet for captions made elsewhere: each caption is its own raw text."""
    taxonomy = taxonomy or default_taxonomy()
    images = {
        name: ImageCaption(caption, caption, concepts=extract_concepts(caption, taxonomy))
        for name, caption in captions.items()
    }
    return CaptionSet(
        strategy="external",
        trigger_word=trigger_word,
        tagger=None,
        captioner=None,
        taxonomy=taxonomy.name,
        absorbed_tags=[],
        top_concepts=top_concepts([i.concepts["concepts"] for i in images.values()]),
        images=images,
    )


@lru_cache(maxsize=1)
def default_taxonomy() -> Taxonomy:
    return load_taxonomy()


def _checked_trigger(trigger_word: str) -> str:
    try:
        return validate_trigger_word(trigger_word)
    except InvalidInputError as error:
        raise CaptionError(str(error)) from None


def _check_sources(plan: CaptionPlan) -> None:
    if not plan.strategy:
        raise CaptionError("a caption strategy needs at least one part")
    if "tags" in plan.strategy and plan.tagger is None:
        raise CaptionError(
            "the 'tags' caption strategy needs a tagger: set LORA_PIPELINE_TAGGER to a WD14 "
            "ONNX model (and LORA_PIPELINE_TAGGER_TAGS to its selected_tags.csv)"
        )
    if "vlm" in plan.strategy and plan.captioner is None:
        raise CaptionError(
            "the 'vlm' caption strategy needs a vision-language model: set "
            "LORA_PIPELINE_CAPTIONER to 'package.module:factory', or LORA_PIPELINE_IDENTIFIER "
            "(or the project's LORA_PIPELINE_PROJECT_IDENTIFIERS entry) to llava:<folder or hub "
            "id> or ollama:<url>#<model>"
        )


def _observe(
    version_dir: Path, manifest: dict[str, Any], plan: CaptionPlan
) -> dict[str, _Observation]:
    """Run the tagger and the captioner the strategy needs, a chunk of images at a time."""
    files = [entry["file"] for entry in manifest["images"]]
    observations = {name: _Observation() for name in files}
    use_tagger = "tags" in plan.strategy
    use_captioner = "vlm" in plan.strategy
    if not (use_tagger or use_captioner):
        return observations
    for start in range(0, len(files), _IMAGE_CHUNK):
        chunk = files[start : start + _IMAGE_CHUNK]
        images = [_open(version_dir / IMAGES_DIRNAME / name) for name in chunk]
        if use_tagger:
            results = plan.tagger.tag(images)
            if len(results) != len(images):
                raise CaptionError(
                    f"tagger {plan.tagger.name!r} returned {len(results)} results for "
                    f"{len(images)} images"
                )
            for name, result in zip(chunk, results, strict=True):
                observations[name].tags = result
        if use_captioner:
            for name, text in zip(chunk, _vlm_texts(plan.captioner, chunk, images), strict=True):
                observations[name].vlm = clean_caption(text) or None
    return observations


def _vlm_texts(captioner: Captioner, names: list[str], images: list[Image.Image]) -> list[str]:
    try:
        return caption_images(captioner, images)
    except CaptionerError as error:
        where = names[0] if len(names) == 1 else f"{names[0]} to {names[-1]}"
        raise CaptionError(f"cannot caption {where}: {error}") from None


def _open(path: Path) -> Image.Image:
    try:
        return load_image(path)
    except InvalidImageError as error:
        raise CaptionError(f"cannot caption {path.name}: {error}") from None


def _caption_tags(observation: _Observation, plan: CaptionPlan, blacklist: set[str]) -> list[str]:
    if observation.tags is None:
        return []
    names = [name for name, _ in observation.tags.general]
    if plan.include_character_tags:
        names = [name for name, _ in observation.tags.character] + names
    formatted = [format_tag(name) for name in names]
    return [tag for tag in dict.fromkeys(formatted) if tag and tag.casefold() not in blacklist]


def _shared_tags(tag_lists: dict[str, list[str]]) -> list[str]:
    """Tags present in every image's list, in the first image's order."""
    lists = list(tag_lists.values())
    if len(lists) < PRUNE_MIN_IMAGES:
        return []
    common = set.intersection(*({tag.casefold() for tag in tags} for tags in lists))
    return [tag for tag in lists[0] if tag.casefold() in common]


def _image_caption(
    trigger: str,
    plan: CaptionPlan,
    observation: _Observation,
    kept_tags: list[str],
    taxonomy: Taxonomy,
) -> ImageCaption:
    design = distinct_parts(plan.design_prompt, skip=trigger) if "design" in plan.strategy else []
    sources = {"design": design, "tags": kept_tags, "vlm": _vlm_parts(observation.vlm, trigger)}
    if "vlm" in plan.strategy and not any(sources[name] for name in plan.strategy):
        # The model said nothing usable: the design prompt describes the image instead.
        sources["vlm"] = _vlm_parts(plan.design_prompt, trigger)
    parts = _dedupe(part for name in plan.strategy for part in sources[name])
    parts = [part for part in parts if part.casefold() != trigger.casefold()]
    if design and parts and parts[0] == design[0] and starts_with_word(design[0], trigger):
        # "emma standing outdoors" already opens with the trigger; prefixing would repeat it.
        # (Only a design prompt: a tag such as "emma (cosplay)" is not the trigger word.)
        caption = ", ".join(parts)
    else:
        caption = ", ".join([trigger, *parts])
    tags = observation.tags
    all_tags = [format_tag(name) for name in tags.names] if tags else []
    raw_parts = _dedupe([*design, *all_tags, *sources["vlm"]])
    raw_caption = ", ".join(raw_parts)
    return ImageCaption(
        caption=caption,
        raw_caption=raw_caption,
        tags=kept_tags,
        character_tags=[format_tag(name) for name, _ in tags.character] if tags else [],
        rating=tags.rating if tags else None,
        vlm_caption=observation.vlm,
        concepts=extract_concepts(raw_caption, taxonomy),
        tag_scores={name: score for name, score in (*tags.character, *tags.general)}
        if tags
        else {},
    )


def _vlm_parts(text: str | None, trigger: str) -> list[str]:
    """The parts of a text without the trigger word, which the strategy places itself."""
    if not text:
        return []
    pattern = r"(?<!\w)" + re.escape(trigger) + r"(?:'s)?(?!\w)"
    return distinct_parts(re.sub(pattern, " ", text, flags=re.IGNORECASE), skip=trigger)


def _dedupe(parts: Sequence[str] | Any) -> list[str]:
    seen: set[str] = set()
    unique = []
    for part in parts:
        key = part.casefold()
        if part and key not in seen:
            seen.add(key)
            unique.append(part)
    return unique
