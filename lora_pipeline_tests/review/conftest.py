"""Review app fixtures: a studio (registry, data root, cast) and an HTTP client on its app."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.testclient import TestClient

from lora_pipeline.config import Settings
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.review.app import create_app
from lora_pipeline.review.views.approve import REVIEWER_COOKIE

BASE_URL = "http://127.0.0.1"
# Debian's Chromium, which scripts/setup.sh installs, driven by Playwright.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What a browser sends with a form posted from the app's own page.
OWN_ORIGIN = {"origin": BASE_URL}
# The name a test browser gave once (the review app refuses decisions without one).
REVIEWER = "tester"
_FORM_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def app_client(app: Starlette, **kwargs: Any) -> TestClient:
    """A client of `app` that posts as the app's own pages do (with their Origin), from a
    browser whose reviewer has given their name."""
    headers = {**OWN_ORIGIN, **kwargs.pop("headers", {})}
    cookies = {REVIEWER_COOKIE: REVIEWER, **kwargs.pop("cookies", {})}
    base_url = kwargs.pop("base_url", BASE_URL)
    return TestClient(app, base_url=base_url, headers=headers, cookies=cookies, **kwargs)


def form_token(client: TestClient, path: str = "/ingest") -> str:
    """The CSRF token of the client's browser, read from a page's form as a script would
    (the Ingest page always has its form)."""
    found = _FORM_TOKEN.search(client.get(path).text)
    assert found, f"no csrf_token in the form of {path}"
    return found.group(1)


@pytest.fixture(autouse=True)
def _no_studio_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the default negative-term table and no Echo Brain, whatever the machine has."""
    for name in ("NEGATIVE_TERMS", "ECHO_BRAIN_URL", "REVIEW_TOKEN"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)


@dataclass
class Studio:
    settings: Settings
    registry: Registry
    root: DataRoot
    app: Starlette
    client: TestClient

    def add_image(
        self,
        character: str,
        n: int,
        origin: str = "generated",
        params: dict[str, Any] | None = None,
        status: str = "pending",
    ) -> int:
        """A real PNG in the data root (colour from `n`) and its registry row."""
        stored = self.root.put_image(Image.new("RGB", (32, 24), (n % 256, n // 256 % 256, 90)))
        with self.registry.session() as session:
            character_id = commands.get_character(session, character).id
            image, _ = commands.add_image(
                session,
                character_id,
                stored.sha256,
                stored.relpath,
                stored.width,
                stored.height,
                origin,
                status=status,
                generation_params=params,
            )
            return image.id

    def csrf(self, client: TestClient | None = None) -> str:
        """The CSRF token of the client's browser (its id cookie is set by the first page)."""
        return form_token(client or self.client)

    def new_client(self, **kwargs: Any) -> TestClient:
        """Another browser on the app."""
        return app_client(self.app, **kwargs)


def make_settings(home: Path, base_model: str | None = "/models/anime-v3.safetensors") -> Settings:
    return Settings(
        home=home,
        database_url=f"sqlite:///{home / 'registry.db'}",
        data_root=home / "data",
        base_model=base_model,
    )


def add_cast(registry: Registry) -> None:
    with registry.session() as session:
        commands.add_project(session, "show", "The Show", style_prompt="anime style")
        commands.add_project(session, "other", "Other Show")
        commands.add_character(
            session, "show", "aiko", "Aiko", design_prompt="teal hair, yellow raincoat"
        )
        commands.add_character(session, "show", "kenji", "Kenji", design_prompt="black hair")
        commands.add_character(session, "other", "mio", "Mio", design_prompt="red scarf")


@contextmanager
def open_studio(settings: Settings) -> Iterator[Studio]:
    """The app on `settings`, its registry with the cast, and a browser on it."""
    app = create_app(settings)
    registry = Registry(settings.database_url)
    add_cast(registry)
    with app_client(app) as client:
        yield Studio(settings, registry, DataRoot(settings.data_root), app, client)
    registry.dispose()


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[Studio]:
    with open_studio(make_settings(tmp_path / "home")) as opened:
        yield opened


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module, for every page test of the review app."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def named_context(browser: Any, **kwargs: Any) -> Any:
    """A Chromium context whose reviewer already gave their name (the cookie the Approve tab
    sets), for tests about something else than asking for it."""
    context = browser.new_context(**kwargs)
    cookie = {"name": REVIEWER_COOKIE, "value": REVIEWER, "domain": "127.0.0.1", "path": "/"}
    context.add_cookies([cookie])
    return context
