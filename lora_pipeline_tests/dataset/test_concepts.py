"""Concept extraction with taxonomies: the packaged default and custom ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_pipeline.dataset.concepts import (
    SINGLE_VALUED,
    TaxonomyError,
    extract_concepts,
    load_taxonomy,
    parse_taxonomy,
    top_concepts,
)
from lora_pipeline.dataset.service import taxonomy_for_project

COSPLAY = {
    "costume_type": ["anime character", "video game character", "original design"],
    "costume_elements": ["wig", "armor", "prop weapon", "cape", "mask", "accessories"],
    "setting": ["convention", "photo studio", "outdoor location", "green screen"],
}


def test_default_taxonomy_has_the_guide_categories() -> None:
    taxonomy = load_taxonomy()
    assert taxonomy.name == "default"
    assert list(taxonomy.categories) == ["pose", "setting", "lighting", "clothing", "attributes"]
    assert set(SINGLE_VALUED) <= set(taxonomy.categories)
    assert all(len(concepts) >= 8 for concepts in taxonomy.categories.values())


def test_extract_from_tags_and_plain_english() -> None:
    text = (
        "1girl, solo, smile, blonde_hair, school uniform, standing, sitting, outdoors, "
        "in the sunlight, Looking-At-Viewer, T-shirt"
    )
    record = extract_concepts(text, load_taxonomy())
    assert record == {
        "concepts": [
            "smiling",
            "blonde_hair",
            "school_uniform",
            "standing",
            "sitting",
            "outdoor",
            "natural",
            "frontal",
            "shirt",
        ],
        # Single-valued categories take the first concept mentioned.
        "pose": "standing",
        "setting": "outdoor",
        "lighting": "natural",
        "clothing": ["school_uniform", "shirt"],
        "attributes": ["smiling", "blonde_hair"],
    }


def test_whole_words_only() -> None:
    record = extract_concepts("a bedroom with a hatstand, redhead, smiles", load_taxonomy())
    assert record["setting"] == "bedroom"  # not "indoor" through "room"
    assert record["clothing"] == []  # "hat" is not in "hatstand"
    assert record["attributes"] == []
    assert extract_concepts("", load_taxonomy())["concepts"] == []


def test_custom_taxonomy_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy_cosplay.json"
    path.write_text(json.dumps(COSPLAY))
    taxonomy = load_taxonomy(path)
    record = extract_concepts("cosplay of an anime character, wig, cape, at a convention", taxonomy)
    assert record == {
        "concepts": ["anime_character", "wig", "cape", "convention"],
        "costume_type": ["anime_character"],
        "costume_elements": ["wig", "cape"],
        "setting": "convention",
    }


def test_named_entries_and_comments() -> None:
    taxonomy = parse_taxonomy(
        {
            "_comment": "ignored",
            "lighting": [{"name": "natural", "match": ["sunlight", "daylight"]}, "neon"],
        },
        "mine",
    )
    assert extract_concepts("neon signs in daylight", taxonomy) == {
        "concepts": ["neon", "natural"],
        "lighting": "neon",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["pose"], "JSON object"),
        ({}, "no categories"),
        ({"Pose": ["standing"]}, "lower-case identifier"),
        ({"concepts": ["x"]}, "other than"),
        ({"pose": "standing"}, "must be a list"),
        ({"pose": [3]}, "neither a term"),
        ({"pose": [{"name": "x", "match": "y"}]}, "list of terms"),
        ({"pose": [{"name": "x", "words": ["y"]}]}, "unknown key"),
        ({"pose": ["__"]}, "no usable term"),
    ],
)
def test_bad_taxonomies(data: object, message: str) -> None:
    with pytest.raises(TaxonomyError, match=message):
        parse_taxonomy(data, "bad")


def test_taxonomy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match="not found"):
        load_taxonomy(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TaxonomyError, match="cannot read"):
        load_taxonomy(broken)


def test_top_concepts_counts_images_not_mentions() -> None:
    per_image = [["smiling", "outdoor", "smiling"], ["smiling"], ["dress", "outdoor"], []]
    # Most common first, ties by name.
    assert top_concepts(per_image) == [
        {"concept": "outdoor", "count": 2, "frequency": 0.5},
        {"concept": "smiling", "count": 2, "frequency": 0.5},
        {"concept": "dress", "count": 1, "frequency": 0.25},
    ]
    assert top_concepts(per_image, limit=1) == [
        {"concept": "outdoor", "count": 2, "frequency": 0.5}
    ]
    assert top_concepts([]) == []


def test_taxonomy_per_project(tmp_path: Path) -> None:
    folder = tmp_path / "taxonomies"
    folder.mkdir()
    (folder / "cosplay.json").write_text(json.dumps(COSPLAY))
    assert taxonomy_for_project(None, "cosplay").name == "default"
    assert taxonomy_for_project(folder, "cosplay").name == "cosplay.json"
    assert taxonomy_for_project(folder, "other").name == "default"
    assert taxonomy_for_project(folder / "cosplay.json", "other").name == "cosplay.json"
    with pytest.raises(TaxonomyError, match="not found"):
        taxonomy_for_project(folder / "missing.json", "cosplay")
