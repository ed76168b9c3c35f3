"""LLaVA through transformers: a tiny random model saved to disk, loaded like a real one."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.vision import llava
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identifier,
    IdentifierError,
    identification_question,
    parse_identifier_spec,
    short_description,
)
from lora_pipeline.vision.identifier_factory import build_identifier
from lora_pipeline.vision.llava import LlavaIdentifier, _prompt

CAST = [
    CharacterProfile("aiko", "Aiko", "1girl, short teal hair, yellow raincoat, red boots"),
    CharacterProfile("kenji", "Kenji", ""),
]


def _images() -> list[Image.Image]:
    return [
        Image.new("RGB", (64, 48), (200, 20, 20)),
        Image.new("RGB", (40, 40), (20, 20, 200)),
        Image.new("L", (32, 64), 128),
        Image.new("RGB", (48, 48), (0, 200, 0)),
    ]


def test_tiny_llava_identifies_through_the_real_loading_path(tiny_llava: Path) -> None:
    assert (tiny_llava / "model.safetensors").is_file()
    identifier = LlavaIdentifier(str(tiny_llava), device="cpu", batch_size=3, max_new_tokens=6)
    assert isinstance(identifier, Identifier)
    results = identifier.identify(_images(), CAST)
    assert len(results) == 4
    for result in results:
        assert isinstance(result.raw_answer, str)
        assert result.slugs <= {"aiko", "kenji"}
    model, processor = llava.MODELS.get(str(tiny_llava), "cpu")
    assert processor.tokenizer.padding_side == "left"
    assert not model.training


def test_batched_answers_equal_one_by_one(tiny_llava: Path) -> None:
    batched = LlavaIdentifier(str(tiny_llava), device="cpu", batch_size=4, max_new_tokens=8)
    single = LlavaIdentifier(str(tiny_llava), device="cpu", batch_size=1, max_new_tokens=8)
    images = _images()
    answers = [r.raw_answer for r in batched.identify(images, CAST)]
    assert answers == [r.raw_answer for r in single.identify(images, CAST)]
    assert len(set(answers)) > 1, "the answer depends on the image"


def test_prompt_uses_the_chat_template_and_names_the_cast(tiny_llava: Path) -> None:
    _, processor = llava.MODELS.get(str(tiny_llava), "cpu")
    prompt = _prompt(processor, identification_question(CAST))
    assert prompt.startswith("USER: <image>\nWhich of these anime characters")
    assert prompt.endswith("ASSISTANT:")
    assert "- Aiko (aiko): 1girl, short teal hair" in prompt
    assert "- Kenji (kenji): no description" in prompt


def test_missing_model_is_an_identifier_error(tmp_path: Path) -> None:
    identifier = LlavaIdentifier(str(tmp_path / "no-model"), device="cpu")
    with pytest.raises(IdentifierError, match="cannot load LLaVA model"):
        identifier.identify(_images()[:1], CAST)
    assert identifier.identify([], CAST) == []


def test_short_description_cuts_at_a_comma() -> None:
    prompt = ", ".join(f"tag number {i}" for i in range(30))
    short = short_description(prompt)
    assert len(short) <= 120 and short.endswith(tuple("0123456789"))
    assert short_description("  teal   hair ") == "teal hair"


def test_identifier_specs(tiny_llava: Path, tiny_clip: Path) -> None:
    assert parse_identifier_spec("ollama:http://127.0.0.1:11434#llava:13b").model == "llava:13b"
    assert parse_identifier_spec(f"llava:{tiny_llava}").target == str(tiny_llava)
    assert build_identifier(f"llava:{tiny_llava}").name.startswith("llava:")
    assert build_identifier("ollama:http://127.0.0.1:1#llava").name == "ollama:llava"
    reference = build_identifier(f"reference:{tiny_clip}", references=lambda slug: [])
    assert reference.name.startswith("reference:")
    for bad in ("", "clip:/x", "llava:", "ollama:http://x", "ollama:#m"):
        with pytest.raises(ValueError):
            parse_identifier_spec(bad)
    with pytest.raises(ValueError, match="approved images"):
        build_identifier(f"reference:{tiny_clip}")
