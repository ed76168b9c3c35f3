"""Identification and captioning by a vision model served by Ollama (what the studio runs today).

One `POST /api/generate` per image: `{model, prompt, images: [base64], stream: false}`, answered
`{"response": "..."}`. Images are sent as PNGs no larger than the model reads (LLaVA looks at
336-672 px), which keeps requests small however large the frame.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import httpx
from PIL import Image

from lora_pipeline.errors import first_line
from lora_pipeline.vision.captioner import (
    CAPTION_MAX_CHARS,
    CAPTION_PROMPT,
    CaptionerError,
    clean_caption,
)
from lora_pipeline.vision.identification import (
    CharacterProfile,
    Identification,
    IdentifierError,
    identification_question,
    parse_character_answer,
    short_name,
)

DEFAULT_TIMEOUT_S = 120.0
MAX_IMAGE_SIDE = 768
_RETRIES = 1


def encode_image(image: Image.Image, max_side: int = MAX_IMAGE_SIDE) -> str:
    """Base64 PNG of the image, shrunk to max_side on its longer side."""
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _OllamaModel:
    """A vision model served by Ollama, asked about one image per request."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"the Ollama URL must start with http:// or https://, got {url!r}")
        if not model.strip():
            raise ValueError(f"{type(self).__name__} needs a model name, e.g. 'llava:13b'")
        self.url = url.rstrip("/")
        self.model = model
        self.name = short_name("ollama", model)
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._client.close()

    def _generate(self, prompt: str, image_b64: str) -> str:
        body = {
            "model": self.model,
            "prompt": prompt,
            "images": [image_b64],
            "stream": False,
            # Deterministic answers: the same frame is sorted the same way every time.
            "options": {"temperature": 0},
        }
        last_error = ""
        for _ in range(_RETRIES + 1):
            try:
                response = self._client.post(f"{self.url}/api/generate", json=body)
            except httpx.HTTPError as exc:
                last_error = f"cannot reach it ({first_line(exc)})"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {_server_error(response)}"
                continue
            return self._answer(response)
        raise IdentifierError(f"Ollama at {self.url} failed for model {self.model}: {last_error}")

    def _answer(self, response: httpx.Response) -> str:
        if response.status_code != 200:
            raise IdentifierError(
                f"Ollama at {self.url} refused model {self.model}: HTTP "
                f"{response.status_code}: {_server_error(response)}"
            )
        try:
            data: Any = response.json()
        except ValueError as exc:
            raise IdentifierError(
                f"Ollama at {self.url} answered something that is not JSON"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("response"), str):
            raise IdentifierError(f"Ollama at {self.url} answered without a 'response' text")
        return data["response"].strip()


class OllamaIdentifier(_OllamaModel):
    """Asks an Ollama vision model (llava, llava-llama3, ...) which candidates each image shows."""

    def identify(
        self, images: Sequence[Image.Image], candidates: Sequence[CharacterProfile]
    ) -> list[Identification]:
        prompt = identification_question(candidates)
        results = []
        for image in images:
            answer = self._generate(prompt, encode_image(image))
            results.append(Identification(parse_character_answer(answer, candidates), answer))
        return results


class OllamaCaptioner(_OllamaModel):
    """Captions images for LoRA training with an Ollama vision model (the vlm caption strategy);
    answers are cleaned into one caption line."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        prompt: str = CAPTION_PROMPT,
        max_chars: int = CAPTION_MAX_CHARS,
    ) -> None:
        super().__init__(url, model, timeout_s, transport)
        self.prompt = prompt
        self.max_chars = max_chars

    def caption(self, image: Image.Image) -> str:
        try:
            answer = self._generate(self.prompt, encode_image(image))
        except IdentifierError as error:
            raise CaptionerError(str(error)) from None
        return clean_caption(answer, echo=self.prompt, max_chars=self.max_chars)


def _server_error(response: httpx.Response) -> str:
    """Ollama's own error text ({"error": "..."}), else the start of the body."""
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str) and error.strip():
        return error.strip().splitlines()[0][:200]
    return " ".join(response.text.split())[:200] or "no details"
