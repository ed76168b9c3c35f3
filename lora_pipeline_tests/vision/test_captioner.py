"""VLM captioners: cleaning a model's answer, LLaVA (tiny, real loading path), Ollama over HTTP,
and which captioner the configuration picks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.vision import llava
from lora_pipeline.vision.captioner import (
    CAPTION_MAX_CHARS,
    CAPTION_PROMPT,
    BatchCaptioner,
    Captioner,
    CaptionerError,
    FunctionCaptioner,
    caption_images,
    clean_caption,
)
from lora_pipeline.vision.captioner_factory import build_captioner
from lora_pipeline.vision.llava import LlavaCaptioner, LlavaIdentifier
from lora_pipeline.vision.ollama import OllamaCaptioner
from lora_pipeline_tests.vision.fake_ollama import GREY, fake_ollama, two_tone
from lora_pipeline_tests.vision.test_llava import _images as llava_images


def _images() -> list[Image.Image]:
    return [*llava_images(), Image.new("RGB", (64, 64), (240, 240, 240))]


def make_captioner() -> Captioner:
    return FunctionCaptioner(lambda image: "a girl", name="plugin")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "ASSISTANT: The image shows a girl with teal hair.\nShe wears a yellow raincoat; "
            "standing, Standing",
            "a girl with teal hair, She wears a yellow raincoat, standing",
        ),
        (f"{CAPTION_PROMPT}\n teal hair,  smile ", "teal hair, smile"),
        (
            "Sure! Here is the caption:\n1. teal hair\n2) smile\n- outdoors\n* v1.5",
            "teal hair, smile, outdoors, v1.5",
        ),
        # The tiny random LLaVA's kind of answer: control bytes, broken UTF-8, a greedy loop.
        (
            "\x00image JS spik\x0braipp \ufffd\ufffd black black black black",
            "image JS spik raipp black",
        ),
        ("\ufffd\x00  \n , . ", ""),
    ],
)
def test_clean_caption(answer: str, expected: str) -> None:
    cleaned = clean_caption(answer, echo=CAPTION_PROMPT)
    assert cleaned == expected
    assert clean_caption(cleaned, echo=CAPTION_PROMPT) == cleaned  # cleaning is idempotent


def test_long_captions_are_cut_at_a_comma() -> None:
    answer = ", ".join(f"detail number {i}" for i in range(60))
    cleaned = clean_caption(answer)
    assert len(cleaned) <= CAPTION_MAX_CHARS and cleaned.endswith(tuple("0123456789"))
    assert answer.startswith(cleaned + ",")
    assert clean_caption("x" * 50, max_chars=20) == "x" * 20


def test_llava_captioner_on_the_tiny_model(tiny_llava: Path) -> None:
    captioner = LlavaCaptioner(str(tiny_llava), device="cpu", batch_size=3, max_new_tokens=24)
    assert isinstance(captioner, BatchCaptioner) and captioner.name.startswith("llava:")
    images = _images()
    batched = captioner.caption_many(images)
    assert len(batched) == len(images)
    for text in batched:
        # Noise from a random model, but one clean caption line.
        assert text and text == clean_caption(text) and len(text) <= CAPTION_MAX_CHARS
        assert "\n" not in text and "\ufffd" not in text
    assert len(set(batched)) > 1, "the caption depends on the image"
    # Greedy decoding: the same image gets the same caption, alone or in a batch, every time.
    assert [captioner.caption(image) for image in images] == batched
    assert captioner.caption_many(images) == batched
    assert caption_images(captioner, images[:2]) == batched[:2]
    assert captioner.caption_many([]) == []


def test_llava_captioner_shares_the_identifiers_model(tiny_llava: Path) -> None:
    llava.release_models()
    LlavaIdentifier(str(tiny_llava), device="cpu", max_new_tokens=2).identify(_images()[:1], [])
    ((key, (model, _)),) = llava.MODELS.loaded().items()
    LlavaCaptioner(str(tiny_llava), device="cpu", max_new_tokens=2).caption(_images()[0])
    assert list(llava.MODELS.loaded()) == [key] and llava.MODELS.loaded()[key][0] is model


def test_llava_captioner_errors(tmp_path: Path) -> None:
    captioner = LlavaCaptioner(str(tmp_path / "no-model"), device="cpu")
    with pytest.raises(CaptionerError, match="cannot load LLaVA model") as error:
        captioner.caption(_images()[0])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="LlavaCaptioner needs a model"):
        LlavaCaptioner(" ")


def test_ollama_captioner_over_http() -> None:
    with fake_ollama() as server:
        captioner = OllamaCaptioner(server.url, "llava:13b")
        assert isinstance(captioner, Captioner) and captioner.name == "ollama:llava:13b"
        # The fake model's answer for a grey picture, cleaned into a caption.
        assert captioner.caption(two_tone(GREY, GREY)) == "I can't see any of those characters here"
        captioner.close()
        request = server.requests[0]
        assert request["prompt"] == CAPTION_PROMPT and len(request["images"]) == 1
        assert request["options"] == {"temperature": 0} and request["stream"] is False
        server.fail_with = (500, '{"error": "llama runner process has terminated"}')
        with pytest.raises(CaptionerError, match="llama runner process has terminated"):
            OllamaCaptioner(server.url, "llava:13b").caption(two_tone(GREY, GREY))
        server.fail_with = None
        with pytest.raises(CaptionerError, match="HTTP 404"):
            OllamaCaptioner(server.url, "nope").caption(two_tone(GREY, GREY))


def test_build_captioner_order(tiny_llava: Path) -> None:
    llava_spec, ollama_spec = f"llava:{tiny_llava}", "ollama:http://127.0.0.1:1#llava:13b"
    # 1. The captioner setting wins over any identifier.
    plugin = build_captioner(f"{__name__}:make_captioner", [llava_spec, ollama_spec])
    assert plugin is not None and plugin.name == "plugin"
    # 2. Then a LLaVA identifier, wherever it stands; 3. then an Ollama one.
    chosen = build_captioner(None, [f"reference:{tiny_llava}", ollama_spec, llava_spec], "cpu")
    assert isinstance(chosen, LlavaCaptioner) and chosen.model_id == str(tiny_llava)
    assert chosen.device == "cpu"
    chosen = build_captioner(None, [None, ollama_spec])
    assert isinstance(chosen, OllamaCaptioner) and chosen.url == "http://127.0.0.1:1"
    # 4. Nothing that captions: None (the vlm strategy then says what to configure).
    assert build_captioner(None, [f"reference:{tiny_llava}", None]) is None
    assert build_captioner("", []) is None
    with pytest.raises(CaptionerError, match="invalid identifier 'clip:/x'"):
        build_captioner(None, ["clip:/x"])


def test_caption_images_checks_what_captioners_return() -> None:
    class Short:
        name = "short"

        def caption(self, image: Image.Image) -> str:
            return "x"

        def caption_many(self, images: list[Image.Image]) -> list[str]:
            return ["x"]

    with pytest.raises(CaptionerError, match="one text per image"):
        caption_images(Short(), _images()[:2])
    with pytest.raises(CaptionerError, match="returned int, not text"):
        caption_images(FunctionCaptioner(lambda image: 3), _images()[:1])
