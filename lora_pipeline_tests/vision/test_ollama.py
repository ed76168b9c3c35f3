"""The Ollama backend against a fake Ollama server over real HTTP."""

from __future__ import annotations

import base64
import io
import socket

import pytest
from PIL import Image

from lora_pipeline.vision.identification import CharacterProfile, Identifier, IdentifierError
from lora_pipeline.vision.ollama import OllamaIdentifier, encode_image
from lora_pipeline_tests.vision.fake_ollama import BLUE, GREY, RED, fake_ollama, two_tone

CAST = [
    CharacterProfile("aiko", "Aiko", "1girl, short teal hair, yellow raincoat"),
    CharacterProfile("kenji", "Kenji", "1boy, spiky black hair"),
]


def test_identify_over_http() -> None:
    with fake_ollama() as server:
        identifier = OllamaIdentifier(server.url, "llava:13b")
        assert isinstance(identifier, Identifier) and identifier.name == "ollama:llava:13b"
        images = [
            two_tone(RED, RED),
            two_tone(BLUE, BLUE),
            two_tone(RED, BLUE),
            two_tone(GREY, GREY),
        ]
        results = identifier.identify(images, CAST)
        identifier.close()
    assert [set(r.slugs) for r in results] == [{"aiko"}, {"kenji"}, {"aiko", "kenji"}, set()]
    assert results[2].raw_answer == '["Aiko", "Kenji"]'
    assert "can't see" in results[3].raw_answer
    request = server.requests[0]
    assert request["model"] == "llava:13b" and request["stream"] is False
    assert request["options"] == {"temperature": 0}
    assert len(request["images"]) == 1
    assert "Aiko (aiko): 1girl, short teal hair" in request["prompt"]
    assert "Kenji (kenji)" in request["prompt"]


def test_images_are_sent_small() -> None:
    big = Image.new("RGB", (1920, 1080), RED)
    decoded = Image.open(io.BytesIO(base64.b64decode(encode_image(big))))
    assert decoded.format == "PNG" and decoded.size == (768, 432)


def test_unknown_model_is_a_clear_error() -> None:
    with fake_ollama() as server:
        identifier = OllamaIdentifier(server.url, "nope")
        with pytest.raises(IdentifierError, match="model 'nope' not found") as error:
            identifier.identify([two_tone(RED, RED)], CAST)
    assert "HTTP 404" in str(error.value) and "\n" not in str(error.value)


def test_server_errors_are_retried_then_reported() -> None:
    with fake_ollama() as server:
        server.fail_with = (500, '{"error": "llama runner process has terminated"}')
        identifier = OllamaIdentifier(server.url, "llava:13b")
        with pytest.raises(IdentifierError, match="llama runner process has terminated"):
            identifier.identify([two_tone(RED, RED)], CAST)
    assert len(server.requests) == 2  # one retry


def test_an_empty_error_text_falls_back_to_the_body() -> None:
    with fake_ollama() as server:
        server.fail_with = (500, '{"error": ""}')
        identifier = OllamaIdentifier(server.url, "llava:13b")
        with pytest.raises(IdentifierError, match='HTTP 500: {"error": ""}'):
            identifier.identify([two_tone(RED, RED)], CAST)


def test_answer_without_response_text() -> None:
    with fake_ollama() as server:
        server.fail_with = (200, '{"model": "llava:13b", "done": true}')
        with pytest.raises(IdentifierError, match="without a 'response'"):
            OllamaIdentifier(server.url, "llava:13b").identify([two_tone(RED, RED)], CAST)
        server.fail_with = (200, "<html>proxy page</html>")
        with pytest.raises(IdentifierError, match="not JSON"):
            OllamaIdentifier(server.url, "llava:13b").identify([two_tone(RED, RED)], CAST)


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    identifier = OllamaIdentifier(f"http://127.0.0.1:{port}", "llava:13b", timeout_s=5)
    with pytest.raises(IdentifierError, match="cannot reach it"):
        identifier.identify([two_tone(RED, RED)], CAST)


def test_no_images_no_requests() -> None:
    with fake_ollama() as server:
        assert OllamaIdentifier(server.url, "llava:13b").identify([], CAST) == []
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "model"), [("ftp://x", "m"), ("127.0.0.1:11434", "m"), ("http://x", " ")]
)
def test_bad_settings(url: str, model: str) -> None:
    with pytest.raises(ValueError):
        OllamaIdentifier(url, model)
