"""Sensor ticks against the registry's size (issue 18 item 3).

Each sensor measured here is ticked over the same new events (5,000 new rejections on ten
characters; five new characters) in a small registry (10 characters, 6,000 images) and a large
one (1,000 characters, ~200,000 images, 5,000 rejections the cursor is already past), on SQLite
and on PostgreSQL (127.0.0.1:5432, skipped when unreachable). The ratio large/small says
whether a tick costs what arrives (goal ≤ 2) and the large tick's time the goal ≤ 1 s.
The registries are built by bulk inserts so the setup stays short.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance, build_sensor_context
from sqlalchemy import insert, select

from benchmarks.run import Result
from lora_pipeline.defs import sensors
from lora_pipeline.defs.resources import RegistryResource
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import Character, Feedback, Image, Project

NEW_REJECTIONS = 5000
NEW_CHARACTERS = 5
# Images of each of the ten characters the new rejections fall on.
EVENT_IMAGES = 600
CHUNK = 10_000


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


def _build(registry: Registry, characters: int, images: int, old_rejections: int) -> None:
    """Ten event characters with EVENT_IMAGES images each, the rest share what is left."""
    with registry.session() as session:
        session.execute(insert(Project), [{"slug": "show", "name": "Show"}])
    _characters(registry, 0, characters)
    per_other = (images - 10 * EVENT_IMAGES) // max(1, characters - 10)
    rows: list[dict] = []
    serial = 0
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
            }
            for n in range(count)
        ]
        serial += count
    _bulk(registry, Image, rows)
    # Old rejections on the other characters' images: rows the cursor is already past.
    with registry.session(readonly=True) as session:
        old = session.execute(
            select(Image.id, Image.character_id)
            .where(Image.character_id > 10)
            .limit(old_rejections)
        ).all()
    _bulk(registry, Feedback, [{"image_id": i, "character_id": c} for i, c in old])


def _new_rejections(registry: Registry) -> None:
    with registry.session(readonly=True) as session:
        rows = session.execute(
            select(Image.id, Image.character_id)
            .where(Image.character_id <= 10)
            .order_by(Image.id)
            .limit(NEW_REJECTIONS)
        ).all()
    _bulk(registry, Feedback, [{"image_id": i, "character_id": c} for i, c in rows])


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


def _measure(url: str, characters: int, images: int, old_rejections: int) -> dict[str, float]:
    migrate(url)
    registry = Registry(url)
    started = time.perf_counter()
    _build(registry, characters, images, old_rejections)
    figures = {"setup_s": time.perf_counter() - started}
    with DagsterInstance.ephemeral() as instance:
        # Catch up with the registry as it was, then measure the new events alone.
        _, _, rejection_cursor = _drain(sensors.rejection_sensor, registry, instance, None)
        _, _, character_cursor = _drain(
            sensors.character_partitions_sensor, registry, instance, None
        )
        _new_rejections(registry)
        _characters(registry, characters, NEW_CHARACTERS)
        figures["rejection_tick_s"], figures["rejection_ticks"], _ = _drain(
            sensors.rejection_sensor, registry, instance, rejection_cursor
        )
        figures["partition_tick_s"], _, _ = _drain(
            sensors.character_partitions_sensor, registry, instance, character_cursor
        )
    registry.engine.dispose()
    return figures


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
            for key in ("rejection_tick_s", "partition_tick_s"):
                figures[f"{backend}_{key}_small"] = round(small[key], 4)
                figures[f"{backend}_{key}_large"] = round(large[key], 4)
                figures[f"{backend}_{key}_ratio"] = round(large[key] / small[key], 2)
            figures[f"{backend}_rejection_ticks"] = large["rejection_ticks"]
            figures[f"{backend}_setup_large_s"] = round(large["setup_s"], 1)
            small_total += small["rejection_tick_s"] + small["partition_tick_s"]
            large_total += large["rejection_tick_s"] + large["partition_tick_s"]
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
