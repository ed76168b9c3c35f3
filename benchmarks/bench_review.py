"""The review app under 20 concurrent reviewers, and the rejection → regeneration latency.

Measured: 20 threads, each an httpx client with its own cookies and CSRF token, approve and
reject pending images through the app (uvicorn on 127.0.0.1, SQLite registry). Every image is
on the screen of two reviewers at once, so half the decisions race and must get 409: the
registry is then counted to show that no decision was lost or taken twice.
Baseline: the same decisions, from 20 threads, made directly with the registry commands.
Then: the time the rejection sensor takes to turn a rejection into a regeneration run request.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median, quantiles

import httpx
from dagster import DagsterInstance, build_sensor_context
from PIL import Image as PILImage
from sqlalchemy import func, select

from benchmarks.run import Result
from lora_pipeline.config import Settings
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.defs.sensors import rejection_sensor
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import ConflictError
from lora_pipeline.registry.models import Feedback, Image
from lora_pipeline.review.app import background_server, create_app

CLIENTS = 20
IMAGES = 200
ROUNDS = 3
SENSOR_SAMPLES = 5
CHARACTERS = ("aiko", "kenji", "mio", "ren")
JSON = {"accept": "application/json"}


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    decided: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, outcome: str) -> None:
        with self.lock:
            self.latencies_s.append(seconds)
            if outcome == "ok":
                self.decided += 1
            elif outcome == "conflict":
                self.conflicts += 1
            else:
                self.errors.append(outcome)


def _studio(home: Path) -> tuple[Settings, Registry, list[int]]:
    settings = Settings(
        home=home, database_url=f"sqlite:///{home / 'registry.db'}", data_root=home / "data"
    )
    settings.ensure_dirs()
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    root = DataRoot(settings.data_root)
    ids = []
    with registry.session() as session:
        commands.add_project(session, "show", "The Show")
        characters = [
            commands.add_character(session, "show", slug, slug.title(), design_prompt="x")
            for slug in CHARACTERS
        ]
        for n in range(IMAGES):
            stored = root.put_image(PILImage.new("RGB", (16, 16), (n % 256, n // 256, 7)))
            image, _ = commands.add_image(
                session,
                characters[n % len(characters)].id,
                stored.sha256,
                stored.relpath,
                16,
                16,
                "generated",
            )
            ids.append(image.id)
    return settings, registry, ids


def _assignments(ids: list[int]) -> list[list[tuple[int, bool]]]:
    """Each client's (image id, reject?) list; every image is on two clients' screens."""
    work: list[list[tuple[int, bool]]] = [[] for _ in range(CLIENTS)]
    for n, image_id in enumerate(ids):
        reject = n % 2 == 1
        work[n % CLIENTS].append((image_id, reject))
        work[(n + 1) % CLIENTS].append((image_id, reject))
    return work


def _in_threads(jobs: list[Callable[[], None]]) -> float:
    threads = [threading.Thread(target=job) for job in jobs]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def _form_token(page: str) -> str:
    """The CSRF token of this browser, read from a form of the app's page."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if found is None:
        raise RuntimeError("the review app's page has no csrf_token")
    return found.group(1)


def _http_client_job(url: str, work: list[tuple[int, bool]], tally: Tally) -> Callable[[], None]:
    def job() -> None:
        # A browser on the app's page: its forms post with the app's Origin.
        with httpx.Client(base_url=url, timeout=60, headers={"origin": url}) as client:
            client.get("/approve?character=aiko")  # the page a reviewer opens first
            token = _form_token(client.get("/ingest").text)
            for image_id, reject in work:
                action = "reject" if reject else "approve"
                data = {"csrf_token": token, "reviewer": "bench"}
                if reject:
                    data |= {"category": ["wrong_style", "bad_quality"], "notes": "bench"}
                start = time.perf_counter()
                response = client.post(f"/images/{image_id}/{action}", data=data, headers=JSON)
                elapsed = time.perf_counter() - start
                outcome = {200: "ok", 409: "conflict"}.get(
                    response.status_code, f"{response.status_code}: {response.text[:100]}"
                )
                tally.add(elapsed, outcome)

    return job


def _direct_job(registry: Registry, work: list[tuple[int, bool]], tally: Tally) -> Callable:
    def job() -> None:
        for image_id, reject in work:
            start = time.perf_counter()
            try:
                with registry.session() as session:
                    if reject:
                        commands.reject_image(
                            session,
                            image_id,
                            ["wrong_style", "bad_quality"],
                            notes="bench",
                            reviewer="bench",
                            negative_terms=["wrong art style", "blurry", "low quality"],
                        )
                    else:
                        commands.approve_image(session, image_id, reviewer="bench")
                outcome = "ok"
            except ConflictError:
                outcome = "conflict"
            tally.add(time.perf_counter() - start, outcome)

    return job


def _check_nothing_lost(registry: Registry, ids: list[int], tally: Tally) -> None:
    """Registry rows against the answers: every image decided once, every answer recorded."""
    with registry.session(readonly=True) as session:
        decided = session.scalar(
            select(func.count(Image.id)).where(Image.id.in_(ids), Image.status != "pending")
        )
        rejected = session.scalar(
            select(func.count(Image.id)).where(Image.id.in_(ids), Image.status == "rejected")
        )
        feedback = session.scalar(select(func.count(Feedback.id)))
    lost = abs(decided - tally.decided) + abs(rejected - feedback) + (len(ids) - decided)
    if lost or tally.errors or tally.conflicts != len(ids):
        raise RuntimeError(
            f"decisions lost or doubled: {decided} decided rows, {tally.decided} answers, "
            f"{feedback} feedback rows for {rejected} rejections, {tally.conflicts} conflicts, "
            f"errors {tally.errors[:3]}"
        )


def _round(measured: bool) -> tuple[float, Tally]:
    with tempfile.TemporaryDirectory() as tmp:
        settings, registry, ids = _studio(Path(tmp))
        tally = Tally()
        work = _assignments(ids)
        if measured:
            with background_server(create_app(settings)) as url:
                wall = _in_threads([_http_client_job(url, w, tally) for w in work])
        else:
            wall = _in_threads([_direct_job(registry, w, tally) for w in work])
        _check_nothing_lost(registry, ids, tally)
        registry.dispose()
    return wall, tally


def _sensor_latency() -> list[float]:
    """Seconds from a committed rejection to the sensor's regeneration run request."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        _, registry, ids = _studio(Path(tmp))
        resources = {"registry": RegistryResource(database_url=registry.url)}
        with DagsterInstance.ephemeral() as instance:
            cursor = None
            for image_id in ids[:SENSOR_SAMPLES]:
                with registry.session() as session:
                    commands.reject_image(session, image_id, ["not_solo"])
                start = time.perf_counter()
                result = rejection_sensor(
                    build_sensor_context(instance=instance, cursor=cursor, resources=resources)
                )
                samples.append(time.perf_counter() - start)
                if len(result.run_requests) != 1:
                    raise RuntimeError(f"expected one regeneration, got {result.run_requests}")
                cursor = result.cursor
        registry.dispose()
    return samples


def _p(latencies: list[float], percentile: int) -> float:
    return quantiles(latencies, n=100, method="inclusive")[percentile - 1]


def run() -> Result:
    baseline_walls, measured_walls = [], []
    measured_tallies, baseline_tallies = [], []
    for _ in range(ROUNDS):
        wall, tally = _round(measured=False)
        baseline_walls.append(wall)
        baseline_tallies.append(tally)
        wall, tally = _round(measured=True)
        measured_walls.append(wall)
        measured_tallies.append(tally)
    http_latencies = [s for t in measured_tallies for s in t.latencies_s]
    direct_latencies = [s for t in baseline_tallies for s in t.latencies_s]
    sensor = _sensor_latency()
    requests = 2 * IMAGES
    return Result(
        name=f"review app: {requests} approve/reject requests from {CLIENTS} concurrent clients",
        measured_s=median(measured_walls),
        baseline_s=median(baseline_walls),
        baseline="the same decisions through registry commands (20 threads)",
        figures={
            "clients": CLIENTS,
            "images": IMAGES,
            "requests_per_round": requests,
            "rounds": ROUNDS,
            "http_p50_ms": round(_p(http_latencies, 50) * 1000, 1),
            "http_p95_ms": round(_p(http_latencies, 95) * 1000, 1),
            "direct_p50_ms": round(_p(direct_latencies, 50) * 1000, 1),
            "direct_p95_ms": round(_p(direct_latencies, 95) * 1000, 1),
            "decisions_per_s": round(requests / median(measured_walls), 1),
            "conflicts_409_per_round": measured_tallies[0].conflicts,
            "lost_decisions": 0,  # _check_nothing_lost raises otherwise
            "rejection_to_run_request_ms": round(median(sensor) * 1000, 1),
            "rejection_sensor_interval_s": 10,
        },
    )
