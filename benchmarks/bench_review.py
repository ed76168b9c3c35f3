"""The review app under 20 concurrent reviewers, and the rejection → regeneration latency.

Measured, on SQLite and on PostgreSQL: 20 threads, each an httpx client with its own cookies
and CSRF token, approve and reject pending images through `lora-pipeline review` running in
its own process (uvicorn on 127.0.0.1), as a studio runs it. Every image is on the screen of
two reviewers at once, so half the decisions race and must get 409. Afterwards every
acknowledged decision (200) is looked up in the registry: one missing, recorded with the other
outcome, or a rejection without its feedback row, is a lost decision.
Baseline, like for like: the same decisions, from 20 threads of this process, made directly
with the registry commands on the same kind of database; the figures give both and their ratio.
Then: the time the rejection sensor takes to turn a rejection into a regeneration run request.
PostgreSQL is the server at 127.0.0.1:5432 (a throw-away database per round, made as the tests
make theirs); where it cannot be reached its figures say so.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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

CLIENTS = 20
IMAGES = 200
ROUNDS = 3
SENSOR_SAMPLES = 5
CHARACTERS = ("aiko", "kenji", "mio", "ren")
JSON = {"accept": "application/json"}
REPO = Path(__file__).resolve().parents[1]
APP_START_DEADLINE_S = 120.0
# A registry for one round: yields a database URL, or None for the studio's own SQLite file.
Database = Callable[[], AbstractContextManager[str | None]]


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    # Each acknowledged decision: image id → the status its answer gave.
    acknowledged: dict[int, str] = field(default_factory=dict)
    doubled: int = 0
    conflicts: int = 0
    errors: list[str] = field(default_factory=list)
    # The app's own account of each request (its Server-Timing header): part → seconds.
    server_s: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, seconds: float, image_id: int, reject: bool, outcome: str, timing: str = ""
    ) -> None:
        parts = _server_timing(timing)
        with self.lock:
            self.latencies_s.append(seconds)
            for name, part_s in parts.items():
                self.server_s.setdefault(name, []).append(part_s)
            if outcome == "ok":
                self.doubled += image_id in self.acknowledged
                self.acknowledged[image_id] = "rejected" if reject else "approved"
            elif outcome == "conflict":
                self.conflicts += 1
            else:
                self.errors.append(outcome)


def _server_timing(header: str) -> dict[str, float]:
    """`name;dur=ms, ...` → {name: seconds}."""
    parts = {}
    for found in re.finditer(r"([a-z]+);dur=([0-9.]+)", header):
        parts[found.group(1)] = float(found.group(2)) / 1000
    return parts


def _studio(home: Path, database_url: str | None) -> tuple[Settings, Registry, list[int]]:
    url = database_url or f"sqlite:///{home / 'registry.db'}"
    settings = Settings(home=home, database_url=url, data_root=home / "data")
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
                timing = response.headers.get("server-timing", "")
                tally.add(elapsed, image_id, reject, outcome, timing)

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
            tally.add(time.perf_counter() - start, image_id, reject, outcome)

    return job


def _lost_decisions(registry: Registry, ids: list[int], tally: Tally) -> int:
    """Acknowledged decisions the registry does not hold: the image not in the status its
    answer gave, or a rejection without its feedback row. Raises when the round itself went
    wrong (errors, an image acknowledged twice, one left undecided)."""
    with registry.session(readonly=True) as session:
        query = select(Image.id, Image.status).where(Image.id.in_(ids))
        status = dict(session.execute(query).tuples().all())
        with_feedback = set(session.scalars(select(Feedback.image_id)))
        feedback_rows = session.scalar(select(func.count(Feedback.id)))
    acknowledged = tally.acknowledged.items()
    lost = sum(status.get(i) != outcome for i, outcome in acknowledged)
    lost += sum(i not in with_feedback for i, outcome in acknowledged if outcome == "rejected")
    undecided = sum(status.get(i) == "pending" for i in ids)
    rejected = sum(s == "rejected" for s in status.values())
    if tally.errors or tally.doubled or undecided or feedback_rows != rejected:
        raise RuntimeError(
            f"round failed: {tally.doubled} images acknowledged twice, {undecided} left "
            f"pending, {feedback_rows} feedback rows for {rejected} rejections, "
            f"{tally.conflicts} conflicts, errors {tally.errors[:3]}"
        )
    return lost


@contextmanager
def _review_process(settings: Settings, log_path: Path) -> Iterator[str]:
    """`lora-pipeline review` in its own process on this studio; yields its URL once it
    answers, and stops it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_PIPELINE_")}
    env |= {
        "LORA_PIPELINE_HOME": str(settings.home),
        "LORA_PIPELINE_DATABASE_URL": settings.database_url,
        "LORA_PIPELINE_DATA_ROOT": str(settings.data_root),
    }
    command = [sys.executable, "-m", "lora_pipeline.cli", "review", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_it_answers(url, proc, log_path)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_until_it_answers(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + APP_START_DEADLINE_S
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-500:]
            raise RuntimeError(f"the review app exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the review app did not start within {APP_START_DEADLINE_S} s")
        time.sleep(0.2)


def _round(database: Database, measured: bool) -> tuple[float, Tally, int]:
    """One round on a fresh registry: (wall time, answers, lost decisions)."""
    with tempfile.TemporaryDirectory() as tmp, database() as url:
        settings, registry, ids = _studio(Path(tmp), url)
        tally = Tally()
        work = _assignments(ids)
        try:
            if measured:
                with _review_process(settings, Path(tmp) / "review.log") as app_url:
                    wall = _in_threads([_http_client_job(app_url, w, tally) for w in work])
            else:
                wall = _in_threads([_direct_job(registry, w, tally) for w in work])
            lost = _lost_decisions(registry, ids, tally)
        finally:
            registry.dispose()
    return wall, tally, lost


def _sensor_latency() -> list[float]:
    """Seconds from a committed rejection to the sensor's regeneration run request."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        _, registry, ids = _studio(Path(tmp), None)
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


def _ms(latencies: list[float], percentile: int) -> float:
    return round(_p(latencies, percentile) * 1000, 1)


@contextmanager
def _sqlite() -> Iterator[None]:
    yield None  # the round's studio makes its own registry.db


def _databases() -> list[tuple[str, Database]]:
    found: list[tuple[str, Database]] = [("sqlite", _sqlite)]
    try:
        from lora_pipeline_tests.pg import postgres_database_url
    except ImportError:  # pragma: no cover - the test package ships with the repository
        return found
    found.append(("postgresql", lambda: postgres_database_url(prefix="lp_bench_review")))
    return found


def _measure(database: Database) -> dict[str, float | int]:
    """ROUNDS rounds of the app and of the commands alone, interleaved, on one database."""
    walls: dict[bool, list[float]] = {True: [], False: []}
    latencies: dict[bool, list[float]] = {True: [], False: []}
    server: dict[str, list[float]] = {}
    lost = {True: 0, False: 0}
    conflicts = 0
    for _ in range(ROUNDS):
        for measured in (False, True):
            wall, tally, lost_here = _round(database, measured)
            walls[measured].append(wall)
            latencies[measured] += tally.latencies_s
            for name, seconds in tally.server_s.items():
                server.setdefault(name, []).extend(seconds)
            lost[measured] += lost_here
            conflicts = tally.conflicts
    http, direct = latencies[True], latencies[False]
    return {
        "http_p50_ms": _ms(http, 50),
        "http_p95_ms": _ms(http, 95),
        "direct_p50_ms": _ms(direct, 50),
        "direct_p95_ms": _ms(direct, 95),
        "p50_ratio": round(_p(http, 50) / _p(direct, 50), 2),
        "p95_ratio": round(_p(http, 95) / _p(direct, 95), 2),
        # Inside the app: waiting for a pool thread, the decision's transaction, the progress
        # query, and the whole route (after the form was read).
        **{f"app_{name}_p50_ms": _ms(seconds, 50) for name, seconds in server.items()},
        **{f"app_{name}_p95_ms": _ms(seconds, 95) for name, seconds in server.items()},
        "decisions_per_s": round(2 * IMAGES / median(walls[True]), 1),
        "conflicts_409_per_round": conflicts,
        "lost_decisions": lost[True],
        "direct_lost_decisions": lost[False],
        "wall_s": median(walls[True]),
        "direct_wall_s": median(walls[False]),
    }


def run() -> Result:
    figures: dict[str, float | int | str] = {
        "clients": CLIENTS,
        "images": IMAGES,
        "requests_per_round": 2 * IMAGES,
        "rounds": ROUNDS,
    }
    walls: dict[str, tuple[float, float]] = {}
    for name, database in _databases():
        try:
            measured = _measure(database)
        except BaseException as error:  # noqa: BLE001 - pytest.skip when PG is unreachable
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise
            figures[name] = f"not measured: {str(error).splitlines()[0][:160]}"
            continue
        walls[name] = (float(measured.pop("wall_s")), float(measured.pop("direct_wall_s")))
        figures |= {f"{name}_{key}": value for key, value in measured.items()}
    sensor = _sensor_latency()
    figures["rejection_to_run_request_ms"] = round(median(sensor) * 1000, 1)
    figures["rejection_sensor_interval_s"] = 10
    wall, direct_wall = walls.get("sqlite", (float("nan"), float("nan")))
    return Result(
        name=f"review app: {2 * IMAGES} approve/reject requests from {CLIENTS} concurrent clients",
        measured_s=wall,
        baseline_s=direct_wall,
        baseline="the same decisions through registry commands (20 threads), SQLite",
        figures=figures,
    )
