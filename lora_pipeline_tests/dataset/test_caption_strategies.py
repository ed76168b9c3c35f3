"""Caption strategies: design, tags (a real ONNX tagger), vlm, combinations; pruning; concepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.caption_strategies import (
    CAPTIONS_JSON,
    CaptionPlan,
    caption_dataset,
    format_tag,
    load_caption_set,
    parse_strategy,
)
from lora_pipeline.dataset.captions import CaptionError, caption_dataset_design
from lora_pipeline.dataset.concepts import load_taxonomy
from lora_pipeline.dataset.versions import build_manifest, write_dataset_version
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.captioner import (
    Captioner,
    CaptionerError,
    FunctionCaptioner,
    as_captioner,
    load_captioner,
)
from lora_pipeline.vision.tagger import OnnxTagger
from lora_pipeline_tests.dataset.conftest import store_face_images

DESIGN = "1girl, short teal hair, yellow raincoat"
# (shot, smile, outdoors) of images 1..4
PLAN = [("close", True, False), ("mid", False, True), ("far", True, True), ("mid", False, False)]


@pytest.fixture
def version(data_root: DataRoot) -> tuple[Path, dict]:
    manifest = build_manifest("aiko", "aiko", store_face_images(data_root, PLAN))
    return write_dataset_version(data_root, manifest), manifest


@pytest.fixture
def tagger(tiny_tagger_model: Path) -> OnnxTagger:
    return OnnxTagger(tiny_tagger_model)


@pytest.mark.parametrize(
    ("text", "tagger", "expected"),
    [
        ("auto", False, ("design",)),
        ("auto", True, ("design", "tags")),
        (None, True, ("design", "tags")),
        ("tags", False, ("tags",)),
        (" Tags + VLM ", False, ("tags", "vlm")),
        ("vlm+design", True, ("vlm", "design")),
    ],
)
def test_parse_strategy(text: str | None, tagger: bool, expected: tuple[str, ...]) -> None:
    assert parse_strategy(text, tagger_available=tagger) == expected


@pytest.mark.parametrize("text", ["words", "design+design", "design+", "tags,vlm"])
def test_parse_strategy_rejects(text: str) -> None:
    with pytest.raises(CaptionError, match="caption strategy"):
        parse_strategy(text, tagger_available=True)


def test_format_tag_keeps_kaomoji() -> None:
    assert format_tag("blonde_hair") == "blonde hair"
    assert format_tag(" looking_at__viewer ") == "looking at viewer"
    assert format_tag("^_^") == "^_^"
    assert format_tag("o_o") == "o_o"


def test_design_and_tags_prunes_shared_and_blacklisted_tags(
    version: tuple[Path, dict], tagger: OnnxTagger
) -> None:
    version_dir, manifest = version
    plan = CaptionPlan(("design", "tags"), design_prompt=DESIGN, tagger=tagger)
    result = caption_dataset(version_dir, manifest, plan)
    # 1girl and teal hair are on every image: the trigger word absorbs them. The watermark is
    # blacklisted, the character tag left to the trigger word.
    assert result.absorbed_tags == ["1girl", "teal hair"]
    assert result.captions == {
        "aiko_0001.png": "aiko, 1girl, short teal hair, yellow raincoat, smile, ^_^",
        "aiko_0002.png": "aiko, 1girl, short teal hair, yellow raincoat, outdoors",
        # Tags come best score first.
        "aiko_0003.png": "aiko, 1girl, short teal hair, yellow raincoat, smile, outdoors, ^_^",
        "aiko_0004.png": "aiko, 1girl, short teal hair, yellow raincoat",
    }
    for name, caption in result.captions.items():
        assert (version_dir / "captions" / name.replace(".png", ".txt")).read_text() == caption
    first = result.images["aiko_0001.png"]
    assert first.tags == ["smile", "^_^"]
    assert first.character_tags == ["aiko (demo)"]
    assert first.rating == "general"
    assert set(first.tag_scores) == {
        "aiko_(demo)",
        "1girl",
        "teal_hair",
        "watermark",
        "smile",
        "^_^",
    }
    assert "watermark" in first.raw_caption and "aiko (demo)" in first.raw_caption
    assert first.concepts["attributes"] == ["teal_hair", "smiling"]
    assert first.concepts["clothing"] == ["raincoat"]
    assert result.images["aiko_0002.png"].concepts["setting"] == "outdoor"
    assert result.strategy == "design+tags"
    assert result.tagger == "wd14:model.onnx"
    assert result.top_concepts == [
        {"concept": "raincoat", "count": 4, "frequency": 1.0},
        {"concept": "teal_hair", "count": 4, "frequency": 1.0},
        {"concept": "outdoor", "count": 2, "frequency": 0.5},
        {"concept": "smiling", "count": 2, "frequency": 0.5},
    ]


def test_caption_set_round_trips_through_captions_json(
    version: tuple[Path, dict], tagger: OnnxTagger
) -> None:
    version_dir, manifest = version
    plan = CaptionPlan(("tags",), tagger=tagger)
    written = caption_dataset(version_dir, manifest, plan)
    assert load_caption_set(version_dir, manifest) == written
    data = json.loads((version_dir / "captions" / CAPTIONS_JSON).read_text())
    assert data["schema_version"] == 1 and data["strategy"] == "tags"
    # A caption file edited by hand no longer matches: refuse rather than guess.
    (version_dir / "captions" / "aiko_0002.txt").write_text("aiko, edited")
    with pytest.raises(CaptionError, match="does not match"):
        load_caption_set(version_dir, manifest)


def test_options_keep_character_tags_and_shared_tags(
    version: tuple[Path, dict], tagger: OnnxTagger
) -> None:
    version_dir, manifest = version
    plan = CaptionPlan(
        ("tags",), tagger=tagger, blacklist=(), prune_shared_tags=False, include_character_tags=True
    )
    result = caption_dataset(version_dir, manifest, plan)
    assert result.absorbed_tags == []
    assert result.captions["aiko_0004.png"] == "aiko, aiko (demo), 1girl, teal hair, watermark"


def test_no_pruning_below_three_images(data_root: DataRoot, tagger: OnnxTagger) -> None:
    manifest = build_manifest("aiko", "aiko", store_face_images(data_root, PLAN[:2]))
    version_dir = write_dataset_version(data_root, manifest)
    result = caption_dataset(version_dir, manifest, CaptionPlan(("tags",), tagger=tagger))
    assert result.absorbed_tags == []
    assert result.captions["aiko_0002.png"] == "aiko, 1girl, teal hair, outdoors"


def describe(image: Image.Image) -> str:
    red, green, blue = image.getpixel((0, 0))
    return f"A girl on a {'green' if green else 'dark'} background,\nsmiling" if blue else "A girl"


def make_captioner() -> Captioner:
    return FunctionCaptioner(describe, name="describer")


def test_vlm_strategy_with_a_captioner(version: tuple[Path, dict], tagger: OnnxTagger) -> None:
    version_dir, manifest = version
    captioner = load_captioner(f"{__name__}:make_captioner")
    plan = CaptionPlan(("tags", "vlm"), tagger=tagger, captioner=captioner)
    result = caption_dataset(version_dir, manifest, plan)
    assert result.captioner == "describer"
    assert result.captions["aiko_0003.png"] == (
        "aiko, smile, outdoors, ^_^, A girl on a green background, smiling"
    )
    assert result.images["aiko_0004.png"].vlm_caption == "A girl"


def test_missing_sources_and_bad_trigger(data_root: DataRoot, version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    with pytest.raises(CaptionError, match="LORA_PIPELINE_TAGGER"):
        caption_dataset(version_dir, manifest, CaptionPlan(("tags",)))
    with pytest.raises(CaptionError, match="LORA_PIPELINE_CAPTIONER"):
        caption_dataset(version_dir, manifest, CaptionPlan(("design", "vlm")))
    bad = build_manifest("aiko", "Aiko Tanaka", store_face_images(data_root, PLAN[:1]))
    bad_dir = write_dataset_version(data_root, bad)
    with pytest.raises(CaptionError, match="invalid trigger word 'Aiko Tanaka'"):
        caption_dataset(bad_dir, bad, CaptionPlan(("design",), design_prompt=DESIGN))
    assert not (bad_dir / "captions").exists()


def test_design_prompt_opening_with_the_trigger_is_not_repeated(
    version: tuple[Path, dict],
) -> None:
    version_dir, manifest = version
    plan = CaptionPlan(("design",), design_prompt="aiko standing outdoors, aiko, red boots")
    result = caption_dataset(version_dir, manifest, plan)
    assert set(result.captions.values()) == {"aiko standing outdoors, red boots"}
    assert result.images["aiko_0001.png"].concepts["pose"] == "standing"


def test_captions_made_elsewhere_get_concepts(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    caption_dataset_design(version_dir, manifest, "smiling, school uniform")
    loaded = load_caption_set(version_dir, manifest)
    assert loaded.strategy == "external"
    assert loaded.images["aiko_0001.png"].concepts["concepts"] == ["smiling", "school_uniform"]


def test_custom_taxonomy_is_used(version: tuple[Path, dict], tmp_path: Path) -> None:
    version_dir, manifest = version
    path = tmp_path / "cosplay.json"
    path.write_text(json.dumps({"costume_elements": ["wig", "raincoat"]}))
    plan = CaptionPlan(("design",), design_prompt=DESIGN, taxonomy=load_taxonomy(path))
    result = caption_dataset(version_dir, manifest, plan)
    assert result.taxonomy == "cosplay.json"
    assert result.images["aiko_0001.png"].concepts == {
        "concepts": ["raincoat"],
        "costume_elements": ["raincoat"],
    }


def test_captioner_helpers() -> None:
    assert as_captioner(describe).name == "describe"
    captioner = make_captioner()
    assert as_captioner(captioner) is captioner
    with pytest.raises(CaptionerError, match="neither"):
        as_captioner(42)
    with pytest.raises(CaptionerError, match="not text"):
        FunctionCaptioner(lambda image: 3).caption(Image.new("RGB", (4, 4)))
    with pytest.raises(CaptionerError, match="must look like"):
        load_captioner("no_colon")
    with pytest.raises(CaptionerError, match="cannot import"):
        load_captioner("lora_pipeline.no_such_module:factory")
    with pytest.raises(CaptionerError, match="has no"):
        load_captioner(f"{__name__}:no_such_factory")
