"""Rejection categories → negative prompt terms, from the default or a configured table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_pipeline.generation.negatives import (
    DEFAULT_NEGATIVE_TERMS,
    NEGATIVE_TERMS_ENV,
    NegativeTableError,
    configured_negative_table,
    load_negative_table,
    merge_negative_prompt,
    negative_terms_for,
)
from lora_pipeline.registry.commands import REJECTION_CATEGORIES


@pytest.fixture(autouse=True)
def _no_env_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NEGATIVE_TERMS_ENV, raising=False)


def test_default_table_covers_every_category_and_matches_the_guide(tmp_path: Path) -> None:
    assert set(DEFAULT_NEGATIVE_TERMS) == set(REJECTION_CATEGORIES)
    # The user guide's example: wrong_style + bad_quality.
    terms = negative_terms_for(["wrong_style", "bad_quality"], DEFAULT_NEGATIVE_TERMS)
    assert ", ".join(terms) == "wrong art style, blurry, low quality"


def test_terms_keep_category_order_without_repeats() -> None:
    table = {"bad_quality": ["blurry", "lowres"], "wrong_style": ["lowres", "3d"]}
    assert negative_terms_for(["wrong_style", "bad_quality"], table) == ["lowres", "3d", "blurry"]
    assert negative_terms_for([], table) == []


def test_custom_table_from_a_file_replaces_only_its_categories(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"not_solo": ["2girls", " group "], "wrong_pose": []}))
    table = load_negative_table(path)
    assert table["not_solo"] == ("2girls", "group")
    assert table["wrong_pose"] == ()
    assert table["bad_quality"] == DEFAULT_NEGATIVE_TERMS["bad_quality"]


def test_configured_table_from_env_path_inline_json_or_home_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert configured_negative_table(home) is DEFAULT_NEGATIVE_TERMS
    (home / "negative_terms.json").write_text('{"wrong_style": ["3d render"]}')
    assert configured_negative_table(home)["wrong_style"] == ("3d render",)
    elsewhere = tmp_path / "studio.json"
    elsewhere.write_text('{"wrong_style": ["photo"]}')
    monkeypatch.setenv(NEGATIVE_TERMS_ENV, str(elsewhere))
    assert configured_negative_table(home)["wrong_style"] == ("photo",)
    monkeypatch.setenv(NEGATIVE_TERMS_ENV, '{"wrong_style": ["sketch"]}')
    assert configured_negative_table(home)["wrong_style"] == ("sketch",)
    # Without a table argument, the configured one is used.
    assert negative_terms_for(["wrong_style"]) == ["sketch"]


def test_home_file_is_found_through_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path))
    (tmp_path / "negative_terms.json").write_text('{"not_solo": ["duo"]}')
    assert negative_terms_for(["not_solo"]) == ["duo"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"too_cute": ["x"]}', "unknown category 'too_cute'"),
        ('{"not_solo": "crowd"}', "not_solo must map to a list of terms"),
        ('{"not_solo": ["", "x"]}', "every term of not_solo must be non-empty text"),
        ('{"not_solo": [3]}', "every term of not_solo must be non-empty text"),
    ],
)
def test_bad_tables_are_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "table.json"
    path.write_text(text)
    with pytest.raises(NegativeTableError, match=message) as error:
        load_negative_table(path)
    assert str(path) in str(error.value)


def test_missing_table_file_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(NEGATIVE_TERMS_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(NegativeTableError, match="cannot read the negative-term table"):
        configured_negative_table(tmp_path)


def test_merge_negative_prompt_skips_terms_already_present() -> None:
    assert merge_negative_prompt("lowres, Blurry", ["blurry", "crowd"]) == "lowres, Blurry, crowd"
    assert merge_negative_prompt("", ["a", "a"]) == "a"
