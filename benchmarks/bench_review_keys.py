"""A scripted reviewer in Chromium judging a queue of 200 pending images with the keys.

Measured: the Approve tab (`lora-pipeline review` in its own process: uvicorn on 127.0.0.1,
SQLite registry) in Debian's Chromium driven by Playwright with real key presses. The reviewer
opens the single-image view (`o`) and decides every image in it: approve (`a`), or every
fourth one reject with a category (`r`, `2`, `Enter`); every tenth image it also looks at the
next and back (`j`, `k`), every 25th it closes the view and opens it again (`Esc`, `o`). Each
action's latency is timed inside the page, from the key's keydown to the moment the page shows
its result (the next image decoded and its details drawn, the decided card moved out of the
queue, the view closed), by a MutationObserver the benchmark adds to the page, so the driver's
own round trips are not counted. Decisions per minute: the 200 decisions over the whole
scripted session, with no time for thinking, i.e. the most the app lets a person keep up.
Baseline: the same 200 decisions through the registry commands the CLI uses
(`actions.approve_images`, `actions.reject_image`), one after the other in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from PIL import Image as PILImage
from PIL import ImageDraw

from benchmarks.run import Result
from lora_pipeline import actions
from lora_pipeline.config import Settings
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.review.views.approve import REVIEWER_COOKIE
from lora_pipeline_tests.review.conftest import CHROMIUM, CHROMIUM_ARGS

IMAGES = 200
IMAGE_SIDE = 1024  # an SDXL-sized picture: what the view decodes at full resolution
CHARACTERS = ("aiko", "kenji", "mio", "ren")
APPROVED_PER_CHARACTER = 6  # the comparisons shown beside each image
REJECT_EVERY, PEEK_EVERY, REOPEN_EVERY = 4, 10, 25
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 30_000
SERVER_START_S = 60.0

# Added to the page by the benchmark (not the app): keydown times in the capture phase, and a
# watch that resolves with the time a condition on the page first holds.
PROBE = """
(() => {
  performance.setResourceTimingBufferSize(10000);  // the default 250 would drop most requests
  const probe = { key: null, armed: null };
  window.addEventListener("keydown", () => {
    if (probe.armed && probe.key === null) probe.key = performance.now();
  }, true);
  const holds = {
    ready: (id) => {
      const viewer = document.getElementById("viewer");
      return viewer && !viewer.hidden && viewer.dataset.ready === String(id);
    },
    decided: (id) => {
      const card = document.querySelector('#decided .card[data-image-id="' + id + '"]');
      return card !== null && card.querySelector(".notice") !== null;
    },
    closed: () => document.getElementById("viewer").hidden,
  };
  probe.arm = (conditions) => {
    probe.key = null;
    const met = () => conditions.every(([name, id]) => holds[name](id));
    probe.armed = new Promise((resolve) => {
      const observer = new MutationObserver(() => {
        if (probe.key !== null && met()) {
          observer.disconnect();
          resolve(performance.now() - probe.key);
        }
      });
      observer.observe(document.body, { subtree: true, childList: true, attributes: true });
    });
  };
  probe.result = async () => {
    const ms = await probe.armed;
    probe.armed = null;
    return ms;
  };
  window.__probe = probe;
})();
"""


REQUESTS = {
    "request: POST approve/reject": "/(approve|reject)$",
    "request: GET details.json": "/details\\.json$",
}
RESOURCE_TIMES = """pattern => performance.getEntriesByType("resource")
  .filter((entry) => new RegExp(pattern).test(new URL(entry.name).pathname))
  .map((entry) => entry.responseEnd - entry.startTime)"""


def _picture(n: int) -> PILImage.Image:
    picture = PILImage.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (n * 37 % 256, n * 11 % 256, 120))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((200 + n % 300, 150, 700 + n % 300, 900), fill=(240, 220, 200))
    draw.text((40, 40), f"image {n}", fill=(0, 0, 0))
    return picture


def _studio(home: Path) -> tuple[Settings, Registry, list[int]]:
    """200 pending images of four characters, each with some approved images to compare."""
    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'registry.db'}", data_root=home / "data"
    )
    settings.ensure_dirs()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    root = DataRoot(settings.data_root)
    pending = []
    with registry.session() as session:
        commands.add_project(session, "show", "The Show")
        cast = [
            commands.add_character(session, "show", slug, slug.title(), design_prompt="x")
            for slug in CHARACTERS
        ]
        count = len(cast) * APPROVED_PER_CHARACTER + IMAGES
        for n in range(count):
            stored = root.put_image(_picture(n))
            approved = n < len(cast) * APPROVED_PER_CHARACTER
            image, _ = commands.add_image(
                session,
                cast[n % len(cast)].id,
                stored.sha256,
                stored.relpath,
                IMAGE_SIDE,
                IMAGE_SIDE,
                "generated",
                status="approved" if approved else "pending",
                generation_params={"seed": n, "steps": 25, "cfg": 7.0, "sampler": "euler"},
            )
            if not approved:
                pending.append(image.id)
    return settings, registry, pending


@contextmanager
def review_app(settings: Settings) -> Iterator[str]:
    """`lora-pipeline review` on the studio, in its own process as a reviewer runs it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "LORA_PIPELINE_HOME": str(settings.home),
        "LORA_PIPELINE_DATABASE_URL": settings.database_url,
        "LORA_PIPELINE_DATA_ROOT": str(settings.data_root),
    }
    command = [sys.executable, "-m", "lora_pipeline.cli", "review", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the review app did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


class Reviewer:
    """Presses keys on the page and records how long each action took to show."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.latencies: dict[str, list[float]] = defaultdict(list)

    def act(self, name: str, keys: list[str], *conditions: tuple[str, int | None]) -> None:
        *before, last = keys
        for key in before:
            self.page.keyboard.press(key)
        self.page.evaluate("conditions => window.__probe.arm(conditions)", list(conditions))
        self.page.keyboard.press(last)
        self.latencies[name].append(self.page.evaluate("() => window.__probe.result()"))


def _review_in_chromium(url: str, pending: list[int]) -> tuple[float, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(TIMEOUT_MS)
        host = url.split("//")[1].split(":")[0]
        context.add_cookies(
            [{"name": REVIEWER_COOKIE, "value": "bench", "domain": host, "path": "/"}]
        )
        context.add_init_script(PROBE)
        page = context.new_page()
        start = time.perf_counter()
        page.goto(f"{url}/approve")
        page.wait_for_selector(f'.card.current[data-image-id="{pending[0]}"]')
        reviewer = Reviewer(page)
        reviewer.latencies["page load (200 cards)"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        reviewer.act("open (o)", ["o"], ("ready", pending[0]))
        for n, image_id in enumerate(pending):
            upcoming = pending[n + 1] if n + 1 < len(pending) else None
            if n % PEEK_EVERY == PEEK_EVERY - 1 and upcoming is not None:
                reviewer.act("next (j)", ["j"], ("ready", upcoming))
                reviewer.act("previous (k)", ["k"], ("ready", image_id))
            if n % REOPEN_EVERY == REOPEN_EVERY - 1:
                reviewer.act("close (Esc)", ["Escape"], ("closed", None))
                reviewer.act("open (o)", ["o"], ("ready", image_id))
            shown = [("decided", image_id)] + ([("ready", upcoming)] if upcoming else [])
            if n % REJECT_EVERY == REJECT_EVERY - 1:
                reviewer.act("reject (r 2 Enter)", ["r", "2", "Enter"], *shown)
            else:
                reviewer.act("approve (a)", ["a"], *shown)
        wall = time.perf_counter() - start
        # The browser's own timing of each request, to tell the server's share from the page's.
        for name, path in REQUESTS.items():
            reviewer.latencies[name] = page.evaluate(RESOURCE_TIMES, path)
        context.close()
        browser.close()
    return wall, reviewer.latencies


def _review_with_commands(registry: Registry, pending: list[int], home: Path) -> list[float]:
    latencies = []
    for n, image_id in enumerate(pending):
        start = time.perf_counter()
        if n % REJECT_EVERY == REJECT_EVERY - 1:
            actions.reject_image(registry, image_id, ["wrong_style"], reviewer="bench", home=home)
        else:
            refused = actions.approve_images(registry, [image_id], reviewer="bench")
            if refused:
                raise RuntimeError(f"the baseline could not approve {image_id}: {refused}")
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def _check_all_decided(registry: Registry, pending: list[int]) -> None:
    from sqlalchemy import func, select

    from lora_pipeline.registry.models import Image

    with registry.session(readonly=True) as session:
        left = session.scalar(
            select(func.count(Image.id)).where(Image.id.in_(pending), Image.status == "pending")
        )
        rejected = session.scalar(
            select(func.count(Image.id)).where(Image.id.in_(pending), Image.status == "rejected")
        )
    if left or rejected != IMAGES // REJECT_EVERY:
        raise RuntimeError(f"{left} images left pending, {rejected} rejected")


def _p(values: list[float], percentile: int) -> float:
    if len(values) == 1:
        return values[0]
    return quantiles(values, n=100, method="inclusive")[percentile - 1]


def run() -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        settings, registry, pending = _studio(Path(tmp) / "browser")
        with review_app(settings) as url:
            wall, latencies = _review_in_chromium(url, pending)
        _check_all_decided(registry, pending)
        registry.dispose()

        settings, registry, pending = _studio(Path(tmp) / "commands")
        start = time.perf_counter()
        direct = _review_with_commands(registry, pending, settings.home)
        baseline = time.perf_counter() - start
        _check_all_decided(registry, pending)
        registry.dispose()

    every_action = [
        ms
        for name, values in latencies.items()
        if "(" in name and "load" not in name
        for ms in values
    ]
    figures: dict[str, float | int | str] = {
        "images": IMAGES,
        "image_size": f"{IMAGE_SIDE}x{IMAGE_SIDE}",
        "decisions_per_minute": round(IMAGES / wall * 60, 1),
        "target_decisions_per_minute": 30,
        "all_actions_p50_ms": round(_p(every_action, 50), 1),
        "all_actions_p95_ms": round(_p(every_action, 95), 1),
        "target_p95_ms": 100,
    }
    for name, values in latencies.items():
        figures[f"{name}: n"] = len(values)
        figures[f"{name}: p50_ms"] = round(_p(values, 50), 1)
        figures[f"{name}: p95_ms"] = round(_p(values, 95), 1)
    figures["registry commands: p50_ms"] = round(median(direct), 2)
    figures["registry commands: p95_ms"] = round(_p(direct, 95), 2)
    figures["registry commands: decisions_per_minute"] = round(IMAGES / baseline * 60, 1)
    return Result(
        name=f"scripted reviewer in Chromium: {IMAGES} decisions with the keys",
        measured_s=wall,
        baseline_s=baseline,
        baseline="the same decisions through the registry commands (one after the other)",
        figures=figures,
    )
