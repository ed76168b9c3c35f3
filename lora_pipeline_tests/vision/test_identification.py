"""Identification: single-character sources and parsing a vision model's answer."""

from __future__ import annotations

import pytest
from PIL import Image

from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identification,
    Identifier,
    SourceCharacterIdentifier,
    parse_character_answer,
)

MARIO = CharacterProfile("mario", "Mario", "plumber in red")
LUIGI = CharacterProfile("luigi", "Luigi", "plumber in green")
PEACH = CharacterProfile("princess_peach", "Princess Peach", "pink dress")
NO_FACE = CharacterProfile("no-face", "No-Face", "masked spirit")
DR_MARIO = CharacterProfile("dr_mario", "Dr. Mario", "doctor coat")
CAST = [MARIO, LUIGI, PEACH, NO_FACE]


def frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), (i, i, i)) for i in range(count)]


def test_source_character_identifier_attributes_every_frame() -> None:
    identifier = SourceCharacterIdentifier("luigi")
    assert isinstance(identifier, Identifier)
    assert identifier.name == "source_character"
    result = identifier.identify(frames(3), CAST)
    assert (
        result
        == [Identification(frozenset({"luigi"}), "single-character source: frames belong to luigi")]
        * 3
    )


def test_source_character_not_a_candidate_is_skipped() -> None:
    result = SourceCharacterIdentifier("toad").identify(frames(2), CAST)
    assert [r.slugs for r in result] == [frozenset(), frozenset()]
    assert "toad is not among the candidate" in result[0].raw_answer
    assert SourceCharacterIdentifier("toad").identify([], CAST) == []
    with pytest.raises(ValueError, match="slug"):
        SourceCharacterIdentifier(" ")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Mario", {"mario"}),
        ("mario.", {"mario"}),
        ("The image shows MARIO and luigi standing together.", {"mario", "luigi"}),
        ("Characters: Mario, Princess Peach", {"mario", "princess_peach"}),
        ("princess_peach", {"princess_peach"}),
        ("princess-peach is waving", {"princess_peach"}),
        ("Mario's hat is visible", {"mario"}),
        ("- Mario\n- Luigi\n", {"mario", "luigi"}),
        ("1. Luigi\n2. Princess Peach", {"luigi", "princess_peach"}),
        ("None", set()),
        ("none of the characters appear", set()),
        ("No one.", set()),
        ("", set()),
        ("Marios everywhere, mariokart", set()),
        ("Not Mario.", set()),
        ("This is not Mario.", set()),
        ("Mario is not in this image.", set()),
        ("Mario isn't present", set()),
        ("Mario: yes\nLuigi: no", {"mario"}),
        ("Luigi, no. Mario, yes.", {"mario"}),
        ("Neither Mario nor Luigi.", set()),
        ("Not Mario, but Luigi is there.", {"luigi"}),
        ("Mario is here; Luigi does not appear.", {"mario"}),
        ("It might be Mario.", set()),
        ("The figure looks like Luigi", set()),
        ("Is it Mario? Hard to say.", set()),
        ("Of Mario, Luigi and Princess Peach, only Mario appears.", {"mario"}),
        ("Luigi alone is visible", {"luigi"}),
        ("No-Face is standing in the train", {"no-face"}),
        ("No Mario here", set()),
    ],
)
def test_parse_free_text(answer: str, expected: set[str]) -> None:
    assert parse_character_answer(answer, CAST) == frozenset(expected)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('["Mario", "Luigi"]', {"mario", "luigi"}),
        ("[]", set()),
        ('Sure! ```json\n["princess_peach"]\n```', {"princess_peach"}),
        ('{"characters": ["luigi"]}', {"luigi"}),
        ('{"characters": []} Mario is mentioned in prose only', set()),
        ('{"Mario": true, "Luigi": false, "Princess Peach": "yes"}', {"mario", "princess_peach"}),
        ('[{"name": "Mario", "present": true}, {"name": "Luigi", "present": false}]', {"mario"}),
        ('{"answer": "not Mario, only Luigi"}', set()),
        ('{"answer": "Luigi"}', {"luigi"}),
        ('["Bowser"]', set()),
        ("See [1] for Mario", {"mario"}),
    ],
)
def test_parse_json_answers(answer: str, expected: set[str]) -> None:
    assert parse_character_answer(answer, CAST) == frozenset(expected)


def test_longest_name_wins() -> None:
    cast = [MARIO, DR_MARIO]
    assert parse_character_answer("Dr. Mario is examining", cast) == {"dr_mario"}
    assert parse_character_answer("Dr. Mario and Mario", cast) == {"dr_mario", "mario"}
    assert parse_character_answer("Mario", []) == frozenset()
