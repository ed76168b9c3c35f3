"""Property tests (hypothesis) over the review app's form handlers and pages: random field
values, numbers, ids, names, query strings and uploads, each posted as the app's own page
would (its Origin and form token). Whatever comes in, the app answers one of its designed
statuses with a one-line message (never a 500, never a traceback), writes nothing outside the
data root, leaves no upload behind in uploads/incoming, and the registry stays consistent (no
source left running, every stored upload a request names is there, every rejection's image
rejected). One app and registry serve all examples, so they also meet each other's leftovers.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from sqlalchemy import select
from starlette.testclient import TestClient

from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.commands import REJECTION_CATEGORIES
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import CandidateCluster, Feedback, Image, Source
from lora_pipeline.review.app import create_app
from lora_pipeline_tests.media.test_ingest_properties import HEADS
from lora_pipeline_tests.review.conftest import add_cast, app_client, form_token, make_settings

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# What the app answers on purpose: done, redirected, refused input, unknown id, conflict.
DESIGNED = {200, 303, 400, 404, 409}
JSON = {"accept": "application/json"}
# Everything the home may hold besides the data root.
HOME_FILES = {"registry.db", "registry.db-wal", "registry.db-shm", "review_secret"}

# Text as a browser can send it in a form (no lone surrogates: they cannot be encoded).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "1e400", "-0", "0x10", "٣", "²", "1_000", "nan", "1,5"]),
    texts,
)
ids = st.one_of(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 2**63 - 1, 2**63]),
)
slugs = st.one_of(st.sampled_from(["aiko", "kenji", "mio", "show", "other"]), texts)
# Words the handlers act on, so that examples get past the first check.
WORDS = ["approved", "rejected", "active", "candidate", "stale", "image", "video", "single"]
WORDS += ["project", "1", "2", "30", "https://example.com/v", "/approve", "//evil.example"]
values = st.one_of(texts, numbers, slugs, st.sampled_from(WORDS))
FIELDS = [
    "reviewer", "notes", "prompt_edit", "next", "character", "project", "kind", "seed",
    "prompt", "negative_prompt", "minutes", "mode", "url", "fps", "max_frames", "category",
    "slug", "name", "design_prompt", "status",
]  # fmt: skip
forms = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(values, st.lists(values, max_size=3)),
    max_size=8,
)
categories = st.lists(st.one_of(st.sampled_from(REJECTION_CATEGORIES), texts), max_size=4)
ROUTES = [
    "/images/{id}/approve",
    "/images/{id}/reject",
    "/generate",
    "/jobs/clear-stuck",
    "/releases/{id}/{action}",
    "/suggestions/{id}/accept",
    "/suggestions/{id}/dismiss",
    "/ingest",
    "/ingest/{id}/retry",
    "/clusters/{id}/label",
    "/clusters/{id}/dismiss",
]
BASE = {
    "/generate": {"character": "aiko", "kind": "image"},
    "/ingest": {"mode": "single", "character": "aiko", "url": "https://example.com/v"},
}
actions = st.one_of(st.sampled_from(["approve", "activate", "reject", "deactivate"]), texts)
PAGES = [
    "/",
    "/approve",
    "/generate",
    "/gallery",
    "/ingest",
    "/releases",
    "/releases.json",
    "/jobs.json",
    "/clusters",
]
QUERY = ["project", "character", "reviewer", "done", "outcome", "demoted", "card", "created"]
QUERY += ["retried", "requested", "cleared", "stopped", "accepted", "dismissed", "token"]
QUERY += ["status", "cluster", "images"]


@dataclass
class App:
    registry: Registry
    root: DataRoot
    home: Path
    client: TestClient
    token: str


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """One studio for every example: the cast, a few pending images, a failed source."""
    settings_ = make_settings(tmp_path_factory.mktemp("forms") / "home")
    application = create_app(settings_)
    registry = Registry(settings_.database_url)
    add_cast(registry)
    root = DataRoot(settings_.data_root)
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        for n in range(4):
            stored = root.put_image(PILImage.new("RGB", (24, 16), (n * 40, 9, 90)))
            commands.add_image(session, aiko.id, stored.sha256, stored.relpath, 24, 16, "generated")
        source = commands.create_source(session, "show", "url", "https://example.com/v", "aiko")
        commands.set_source_state(session, source.id, "failed", error="no data for 20 s")
    _add_clusters(registry, root, count=6)
    # The app's answer to a bug, not the exception: a 500 must show here to fail the test.
    with app_client(application, raise_server_exceptions=False) as client:
        yield App(registry, root, settings_.home, client, form_token(client))
    registry.dispose()


def _add_clusters(registry: Registry, root: DataRoot, count: int) -> None:
    """Open candidate clusters of one unrecognised crop each (ids 1..count) in "show"."""
    frame_image = root.put_image(PILImage.new("RGB", (32, 32), (1, 2, 3)))
    with registry.session() as session:
        source = commands.create_source(
            session, "show", "image_upload", frame_image.relpath, mode="project"
        )
        frame, _ = commands.add_frame(
            session, source.id, frame_image.sha256, frame_image.relpath, 0, 0.0, 32, 32
        )
        for n in range(count):
            stored = root.put_image(PILImage.new("RGB", (8, 12), (n * 30, 200, 7)))
            crop, _ = cluster_commands.add_unrecognised_crop(
                session, frame.id, stored.sha256, stored.relpath, 8, 12, {"frame_index": 0}
            )
            cluster_commands.save_cluster(session, source.project_id, "test", [crop.id], [1.0])


def _check_answer(answer) -> None:
    event(f"{answer.request.method} {answer.status_code}")  # --hypothesis-show-statistics
    assert answer.status_code in DESIGNED, (answer.status_code, answer.text[:500])
    assert "Traceback" not in answer.text
    if answer.status_code >= 400 and answer.headers["content-type"].startswith("application/json"):
        message = answer.json()["error"]
        assert message and "\n" not in message and "error_id" not in answer.json()


def _check_state(app: App) -> None:
    """Nothing outside the data root, no upload left in incoming, a consistent registry."""
    strays = [
        p
        for p in app.home.rglob("*")
        if p.is_file()
        and not p.is_relative_to(app.root.root)
        and p.name not in HOME_FILES
        and p.parent.name != "logs"
    ]
    assert strays == []
    incoming = app.root.root / "uploads" / "incoming"
    assert not incoming.exists() or list(incoming.iterdir()) == []
    with app.registry.session(readonly=True) as session:
        sources = session.scalars(select(Source)).all()
        assert all(s.state in ("pending", "failed", "done") for s in sources)
        for s in sources:
            if s.kind in ("image_upload", "video_upload"):
                assert app.root.path(s.uri).is_file(), s.uri
        decided = select(Image.status).join(Feedback, Feedback.image_id == Image.id)
        assert set(session.scalars(decided)) <= {"rejected"}
        # A cluster has a character exactly when labelled, and then its crop is its image.
        for cluster in session.scalars(select(CandidateCluster)):
            assert (cluster.character_id is not None) == (cluster.status == "labelled")
            if cluster.character_id is not None:
                (crop,) = cluster_commands.cluster_crops(session, cluster.id)
                image = select(Image).where(
                    Image.sha256 == crop.sha256, Image.character_id == cluster.character_id
                )
                assert session.scalar(image) is not None


def _path(route: str, number: int, action: str) -> str:
    return route.format(id=number, action=quote(action, safe=""))


@EXAMPLES
@given(
    route=st.sampled_from(ROUTES),
    number=ids,
    action=actions,
    fields=forms,
    chosen=categories,
    as_json=st.booleans(),
)
def test_any_form_post_gets_a_designed_answer(
    app: App,
    route: str,
    number: int,
    action: str,
    fields: dict[str, object],
    chosen: list[str],
    as_json: bool,
) -> None:
    # What the app's own form for the route sends, overridden by the random fields.
    data: dict[str, object] = {**BASE.get(route, {}), **fields, "csrf_token": app.token}
    if chosen:
        data["category"] = chosen
    answer = app.client.post(
        _path(route, number, action),
        data=data,
        headers=JSON if as_json else {},
        follow_redirects=False,
    )
    _check_answer(answer)
    _check_state(app)


@EXAMPLES
# Found here: "²" passes str.isdigit() and then failed int() (a 500).
@example(page="/releases", query={"done": "²", "outcome": "approved"}, as_json=False)
@example(
    page="/clusters",
    query={"cluster": "1", "outcome": "labelled", "character": "aiko", "images": "²"},
    as_json=False,
)
@given(
    page=st.sampled_from(PAGES),
    query=st.dictionaries(st.sampled_from(QUERY), values, max_size=5),
    as_json=st.booleans(),
)
def test_any_query_string_gets_a_designed_answer(
    app: App, page: str, query: dict[str, str], as_json: bool
) -> None:
    answer = app.client.get(page, params=query, headers=JSON if as_json else {})
    _check_answer(answer)


@EXAMPLES
@given(number=ids, kind=st.sampled_from(["", "/thumb"]), gallery=st.booleans())
def test_any_image_id_gets_a_designed_answer(
    app: App, number: int, kind: str, gallery: bool
) -> None:
    path = f"/gallery/{number}" if gallery else f"/images/{number}{kind}"
    _check_answer(app.client.get(path))


def _png() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (20, 12), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


file_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60)


@EXAMPLES
@given(
    head=st.sampled_from(HEADS),
    tail=st.binary(max_size=400),
    name=file_names,
    fields=st.fixed_dictionaries(
        {},
        optional={
            "mode": st.one_of(st.sampled_from(["single", "project"]), texts),
            "character": slugs,
            "project": slugs,
            "fps": numbers,
            "max_frames": numbers,
            "url": texts,
        },
    ),
    as_json=st.booleans(),
)
def test_any_upload_gets_a_designed_answer(
    app: App, head: bytes, tail: bytes, name: str, fields: dict[str, str], as_json: bool
) -> None:
    with app.registry.session(readonly=True) as session:
        before = set(session.scalars(select(Source.id)))
    answer = app.client.post(
        "/ingest",
        data={"mode": "single", "character": "aiko", **fields, "csrf_token": app.token},
        files={"file": (name, head + tail, "application/octet-stream")},
        headers=JSON if as_json else {},
        follow_redirects=False,
    )
    _check_answer(answer)
    _check_state(app)
    with app.registry.session(readonly=True) as session:
        new = set(session.scalars(select(Source.id))) - before
    # A request is recorded whole or not at all: one new pending source when accepted.
    assert len(new) == (1 if answer.status_code in (200, 303) else 0)
