"""Review app fixtures: a studio (registry, data root, cast) and an HTTP client on its app."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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

REPO = Path(__file__).resolve().parents[2]
# The review app's process imports the app and opens the registry: allow for a slow machine.
APP_START_DEADLINE_S = 300.0
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


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """Chromium under Playwright (skips the test where either is missing)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module, for every page test of the review app."""
    with launch_chromium() as launched:
        yield launched


@contextmanager
def review_app_process(log_path: Path) -> Iterator[tuple[str, int]]:
    """`lora-pipeline review` in its own process, with this process's environment (home,
    DAGSTER_HOME); yields its URL and pid once it answers, and stops it afterwards."""
    port = _free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_pipeline.cli", "review", "--port", str(port)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_it_answers(url, proc, log_path)
        yield url, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _wait_until_it_answers(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + APP_START_DEADLINE_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the review app exited with {proc.returncode}: see {log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the review app did not start within {APP_START_DEADLINE_S} s")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def named_context(browser: Any, **kwargs: Any) -> Any:
    """A Chromium context whose reviewer already gave their name (the cookie the Approve tab
    sets), for tests about something else than asking for it."""
    context = browser.new_context(**kwargs)
    cookie = {"name": REVIEWER_COOKIE, "value": REVIEWER, "domain": "127.0.0.1", "path": "/"}
    context.add_cookies([cookie])
    return context
