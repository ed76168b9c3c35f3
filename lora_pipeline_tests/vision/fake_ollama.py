"""A fake Ollama server speaking real HTTP on 127.0.0.1, for identification tests.

It answers `/api/generate` like Ollama (`{"model", "response", "done": true}`) and decides who is
in the picture from its colour, so a test knows what must come out: mostly red shows Aiko,
mostly blue shows Kenji, red and blue halves show both, anything else shows no one.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lora_pipeline_tests.media.conftest import serving

RED = (220, 30, 30)
BLUE = (30, 30, 220)
GREY = (128, 128, 128)


def answer_for(image: Image.Image) -> str:
    """What the fake model says about a picture: read from the colours of its two halves."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    half = pixels.shape[1] // 2
    names = []
    for part in (pixels[:, :half], pixels[:, half:]):
        red, _, blue = part.reshape(-1, 3).mean(axis=0)
        if red > blue + 60:
            names.append("Aiko")
        elif blue > red + 60:
            names.append("Kenji")
    names = list(dict.fromkeys(names))
    if not names:
        return "I can't see any of those characters here."
    return json.dumps(names)


@dataclass
class FakeOllama:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Set to make every request fail with this status and body.
    fail_with: tuple[int, str] | None = None
    models: tuple[str, ...] = ("llava:13b",)

    @property
    def images_seen(self) -> int:
        return sum(len(r.get("images", [])) for r in self.requests)


def _handler(state: FakeOllama) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            state.requests.append(body)
            if self.path != "/api/generate":
                self._send(404, "404 page not found", "text/plain")
            elif state.fail_with is not None:
                self._send(state.fail_with[0], state.fail_with[1], "application/json")
            elif body.get("model") not in state.models:
                error = {"error": f"model '{body.get('model')}' not found, try pulling it first"}
                self._send(404, json.dumps(error), "application/json")
            else:
                image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
                reply = {"model": body["model"], "response": answer_for(image), "done": True}
                self._send(200, json.dumps(reply), "application/json")

        def _send(self, status: int, text: str, content_type: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def fake_ollama() -> Iterator[FakeOllama]:
    state = FakeOllama()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield state


def two_tone(
    left: tuple[int, int, int], right: tuple[int, int, int], size: int = 256
) -> Image.Image:
    """A picture whose halves are two colours, with some texture so frames are not flat."""
    # The texture differs per colour pair: a perceptual hash sees structure, not colour.
    rng = np.random.default_rng([*left, *right])
    pixels = np.zeros((size, size, 3), dtype=np.int16)
    pixels[:, : size // 2] = left
    pixels[:, size // 2 :] = right
    pixels += rng.integers(-20, 21, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
