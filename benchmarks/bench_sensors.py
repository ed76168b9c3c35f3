"""Sensor ticks against the registry's size (issue 18 item 3).

Every sensor is ticked over the same new events (5,000 rejections, 100 ingest requests, 100
generation requests, 50 ComfyUI output files and 500 approvals, all on ten characters, and
five new characters) in a small registry (10 characters, 6,000 images, no history) and a large
one (1,000 characters, ~200,000 images half of them approved and trained on, 5,000 old
rejections, 20,000 ingested sources, 50,000 finished jobs, 5,000 ComfyUI files already seen),
on SQLite and on PostgreSQL (127.0.0.1:5432, skipped when unreachable). Each figure is the
mean tick while the sensor drains the events (the last tick finds nothing new). The ratio
large/small says whether a tick costs what arrives (goal ≤ 2) and the large tick's time the
goal ≤ 1 s. The registries are built by bulk inserts so the setup stays short.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from dagster import DagsterInstance, build_sensor_context
from sqlalchemy import insert, select, text, update

from benchmarks.run import Result
from lora_pipeline.dataset.versions import dataset_fingerprint
from lora_pipeline.defs import sensors
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import (
    Character,
    ComfyuiOutputFile,
    DatasetVersion,
    Feedback,
    GenerationJob,
    Image,
    LoraRelease,
    Project,
    Source,
    utcnow,
)

NEW_REJECTIONS = 5000
NEW_CHARACTERS = 5
NEW_SOURCES = 100
NEW_REQUESTS = 100
NEW_OUTPUTS = 50
NEW_APPROVALS_EACH = 50  # on each of the ten event characters
# Images of each of the ten characters the new events fall on.
EVENT_IMAGES = 600
CHUNK = 10_000
# The large registry's history, which the cursors are already past (the small one has none).
OLD_SOURCES = 20_000
OLD_JOBS = 50_000
OLD_OUTPUTS = 5000
SENSORS = ("rejection", "partition", "ingest", "comfyui", "request", "training")


def _sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def _bulk(registry: Registry, table: type, rows: list[dict]) -> None:
    for start in range(0, len(rows), CHUNK):
        with registry.session() as session:
            session.execute(insert(table), rows[start : start + CHUNK])


def _characters(registry: Registry, first: int, count: int) -> None:
    rows = [
        {"project_id": 1, "slug": f"c{n:05d}", "name": f"C{n}", "trigger_word": f"tw{n:05d}"}
        for n in range(first, first + count)
    ]
    _bulk(registry, Character, rows)


def _images(registry: Registry, characters: int, images: int) -> None:
    """Ten event characters with EVENT_IMAGES images each, the rest share what is left; every
    other image was approved, one a second, until a day ago."""
    per_other = (images - 10 * EVENT_IMAGES) // max(1, characters - 10)
    rows: list[dict] = []
    serial = 0
    decided = utcnow() - timedelta(days=1)
    for character_id in range(1, characters + 1):
        count = EVENT_IMAGES if character_id <= 10 else per_other
        rows += [
            {
                "character_id": character_id,
                "sha256": _sha(serial + n),
                "path": f"images/{serial + n}.png",
                "width": 64,
                "height": 64,
                "origin": "generated",
                "status": "approved" if n % 2 else "pending",
                "reviewed_at": decided - timedelta(seconds=serial + n) if n % 2 else None,
            }
            for n in range(count)
        ]
        serial += count
    _bulk(registry, Image, rows)


def _trained(registry: Registry) -> None:
    """A release trained on every character's current approved set: the training sensor has
    nothing to start until new decisions come."""
    with registry.session(readonly=True) as session:
        slugs = dict(session.execute(select(Character.id, Character.slug)).tuples().all())
        approved = session.execute(
            select(Image.character_id, Image.id, Image.sha256).where(Image.status == "approved")
        ).all()
    pairs: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for character_id, image_id, sha in approved:
        pairs[character_id].append((image_id, sha))
    versions = [
        {
            "character_id": character_id,
            "version_hash": dataset_fingerprint(slugs[character_id], images),
            "image_count": len(images),
            "manifest_path": f"datasets/{character_id}/manifest.json",
            "manifest": {},
        }
        for character_id, images in sorted(pairs.items())
    ]
    _bulk(registry, DatasetVersion, versions)
    with registry.session(readonly=True) as session:
        ids = session.execute(select(DatasetVersion.id, DatasetVersion.character_id)).all()
    releases = [
        {
            "character_id": character_id,
            "dataset_version_id": version_id,
            "path": f"loras/{character_id}.safetensors",
            "sha256": _sha(version_id),
            "status": "approved",
        }
        for version_id, character_id in ids
    ]
    _bulk(registry, LoraRelease, releases)


def _history(registry: Registry, old_rejections: int, old_rows: bool) -> None:
    """Rejections, ingested sources, finished generation jobs the cursors are past."""
    with registry.session(readonly=True) as session:
        old = session.execute(
            select(Image.id, Image.character_id)
            .where(Image.character_id > 10)
            .limit(old_rejections)
        ).all()
    _bulk(registry, Feedback, [{"image_id": i, "character_id": c} for i, c in old])
    if not old_rows:
        return
    done = utcnow() - timedelta(days=1)
    _bulk(registry, Source, [_source(n, 11 + n % 990, "done", done) for n in range(OLD_SOURCES)])
    _bulk(registry, GenerationJob, [_job(n, 11 + n % 990, "completed") for n in range(OLD_JOBS)])


def _source(n: int, character_id: int, state: str, processed_at=None) -> dict:
    return {
        "project_id": 1,
        "character_id": character_id,
        "kind": "url",
        "uri": f"https://example.invalid/{state}/{n}",
        "state": state,
        "processed_at": processed_at,
    }


def _job(n: int, character_id: int, status: str, requested: bool = False) -> dict:
    params = {"kind": "image", "requested_by": "review"} if requested else {}
    return {
        "character_id": character_id,
        "prompt": "p",
        "seed": n,
        "status": status,
        "params": params,
        "feedback_ids": [],
    }


def _outputs(registry: Registry, folder: Path, count: int) -> None:
    """Files of the ComfyUI output folder already recorded (the folder keeps its history)."""
    an_hour_ago = time.time() - 3600
    rows = []
    for n in range(count):
        path = folder / "old" / f"old_{n:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
        os.utime(path, (an_hour_ago, an_hour_ago))
        stat = path.stat()
        rows.append(
            {"relpath": f"old/{path.name}", "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        )
    _bulk(registry, ComfyuiOutputFile, rows)


def _build(
    registry: Registry, folder: Path, characters: int, images: int, old_rejections: int
) -> None:
    with registry.session() as session:
        session.execute(insert(Project), [{"slug": "show", "name": "Show"}])
    _characters(registry, 0, characters)
    _images(registry, characters, images)
    _trained(registry)
    large = characters > 10
    _history(registry, old_rejections, large)
    _outputs(registry, folder, OLD_OUTPUTS if large else OLD_OUTPUTS // 100)
    if registry.engine.dialect.name == "postgresql":
        # What autovacuum does soon after a bulk load: the planner's statistics.
        with registry.engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()


def _new_events(registry: Registry, folder: Path) -> None:
    """The same events in both registries, all on the ten event characters."""
    with registry.session(readonly=True) as session:
        rows = session.execute(
            select(Image.id, Image.character_id)
            .where(Image.character_id <= 10)
            .order_by(Image.id)
            .limit(NEW_REJECTIONS)
        ).all()
    _bulk(registry, Feedback, [{"image_id": i, "character_id": c} for i, c in rows])
    _characters(registry, 100_000, NEW_CHARACTERS)
    _bulk(registry, Source, [_source(n, 1 + n % 10, "pending") for n in range(NEW_SOURCES)])
    jobs = [_job(n, 1 + n % 10, "pending", requested=True) for n in range(NEW_REQUESTS)]
    _bulk(registry, GenerationJob, jobs)
    now = utcnow()
    with registry.session() as session:
        for character_id in range(1, 11):
            pending = select(Image.id).where(
                Image.character_id == character_id, Image.status == "pending"
            )
            chosen = list(session.scalars(pending.order_by(Image.id).limit(NEW_APPROVALS_EACH)))
            session.execute(
                update(Image)
                .where(Image.id.in_(chosen))
                .values(status="approved", reviewed_at=now, reviewed_by="bench")
            )
    an_hour_ago = time.time() - 3600
    for n in range(NEW_OUTPUTS):
        path = folder / f"c{n % 10:05d}_{n:04d}.png"
        path.write_bytes(b"png")
        os.utime(path, (an_hour_ago, an_hour_ago))


def _tick(sensor: Callable, registry: Registry, instance: DagsterInstance, cursor: str | None):
    context = build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"registry": RegistryResource(database_url=registry.url)},
    )
    return sensor(context)


def _drain(sensor: Callable, registry: Registry, instance: DagsterInstance, cursor: str | None):
    """Tick until the sensor has taken every event: (seconds per tick, ticks, cursor)."""
    ticks, started = 0, time.perf_counter()
    while True:
        result = _tick(sensor, registry, instance, cursor)
        ticks += 1
        if result.cursor == cursor:
            break
        cursor = result.cursor
    return (time.perf_counter() - started) / ticks, ticks, cursor


def _sensors() -> dict[str, Callable]:
    return {
        "rejection": sensors.rejection_sensor,
        "partition": sensors.character_partitions_sensor,
        "ingest": sensors.ingest_sensor,
        "comfyui": sensors.comfyui_output_sensor,
        "request": sensors.generation_request_sensor,
        "training": sensors.training_sensor,
    }


def _measure(url: str, characters: int, images: int, old_rejections: int) -> dict[str, float]:
    migrate(url)
    registry = Registry(url)
    with tempfile.TemporaryDirectory() as outputs, _environment(Path(outputs)):
        folder = Path(outputs)
        started = time.perf_counter()
        _build(registry, folder, characters, images, old_rejections)
        figures = {"setup_s": time.perf_counter() - started}
        with DagsterInstance.ephemeral() as instance:
            # Catch up with the registry as it was, then measure the new events alone.
            cursors = {
                name: _drain(sensor, registry, instance, None)[2]
                for name, sensor in _sensors().items()
            }
            _new_events(registry, folder)
            for name, sensor in _sensors().items():
                seconds, ticks, _ = _drain(sensor, registry, instance, cursors[name])
                figures[f"{name}_tick_s"], figures[f"{name}_ticks"] = seconds, ticks
    registry.engine.dispose()
    return figures


@contextmanager
def _environment(folder: Path) -> Iterator[None]:
    """The ComfyUI output folder the sensor scans, for this measurement only."""
    saved = os.environ.get(OUTPUT_DIR_ENV)
    os.environ[OUTPUT_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(OUTPUT_DIR_ENV, None)
        else:
            os.environ[OUTPUT_DIR_ENV] = saved


OUTPUT_DIR_ENV = "LORA_PIPELINE_COMFYUI_OUTPUT_DIR"


def _sqlite_url(folder: Path, name: str) -> str:
    return f"sqlite:///{folder / name}.db"


def _postgres_urls() -> Iterator[str] | None:
    try:
        from lora_pipeline_tests.pg import postgres_database_url
    except ImportError:  # pragma: no cover - the test package ships with the repository
        return None
    return postgres_database_url


def run() -> Result:
    figures: dict[str, float | int | str] = {}
    small_total = large_total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", lambda name: _nullcontext(_sqlite_url(Path(tmp), name)))]
        pg = _postgres_urls()
        if pg is not None:
            backends.append(("postgresql", lambda name: pg(prefix=f"lp_bench_{name}")))
        for backend, url_of in backends:
            try:
                with url_of("small") as url:
                    small = _measure(url, 10, 10 * EVENT_IMAGES, 0)
                with url_of("large") as url:
                    large = _measure(url, 1000, 200_000, 5000)
            except BaseException as error:  # noqa: BLE001 - pytest.skip when PG is unreachable
                figures[f"{backend}"] = f"not measured: {str(error).splitlines()[0][:120]}"
                continue
            for name in SENSORS:
                key = f"{name}_tick_s"
                figures[f"{backend}_{key}_small"] = round(small[key], 4)
                figures[f"{backend}_{key}_large"] = round(large[key], 4)
                figures[f"{backend}_{key}_ratio"] = round(large[key] / small[key], 2)
                figures[f"{backend}_{name}_ticks"] = large[f"{name}_ticks"]
                small_total += small[key]
                large_total += large[key]
            figures[f"{backend}_setup_large_s"] = round(large["setup_s"], 1)
    return Result(
        name="sensor ticks: 1,000 characters / 200,000 images vs 10 characters, same new events",
        measured_s=large_total,
        baseline_s=small_total,
        baseline="10 characters",
        figures=figures,
    )


@contextmanager
def _nullcontext(value: str) -> Iterator[str]:
    yield value
