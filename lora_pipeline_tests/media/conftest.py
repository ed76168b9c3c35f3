"""Fixtures for the media tests: small synthetic videos and a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate

VIDEO_SECONDS = 4.0
VIDEO_SIZE = (160, 120)


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s, 160x120, 24 fps, 4 scenes: about 100 KB, made in well under a second."""
    width, height = VIDEO_SIZE
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    return make_synthetic_video(path, VIDEO_SECONDS, width=width, height=height, scenes=4)


@dataclass
class LocalServer:
    base_url: str
    root: Path
    requests: list[tuple[str, str]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # yt-dlp closes the connection after reading headers while probing; that is expected.
        pass


@pytest.fixture
def http_server(tmp_path: Path, synthetic_video: Path) -> Iterator[LocalServer]:
    """Serves clip.mp4 and page.html from 127.0.0.1 and records every request."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "clip.mp4").write_bytes(synthetic_video.read_bytes())
    (root / "page.html").write_text(
        "<html><head><title>Just text</title></head><body><p>No video here.</p></body></html>"
    )
    server_state = LocalServer(base_url="", root=root)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            server_state.requests.append(("GET", self.path))
            super().do_GET()

        def do_HEAD(self) -> None:
            server_state.requests.append(("HEAD", self.path))
            super().do_HEAD()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    server_state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield server_state


@contextmanager
def serving(server: http.server.HTTPServer) -> Iterator[None]:
    """Run an HTTP server on a daemon thread for the duration of the block."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def demo_registry(folder: Path) -> Registry:
    """A migrated SQLite registry with project "demo": Aiko (trigger word char_aiko, red coat)
    and Kenji (blue coat). The caller disposes of it."""
    url = f"sqlite:///{folder / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        commands.add_character(
            session, "demo", "aiko", "Aiko", design_prompt="red coat", trigger_word="char_aiko"
        )
        commands.add_character(session, "demo", "kenji", "Kenji", design_prompt="blue coat")
    return registry
