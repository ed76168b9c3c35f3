"""The review app under faults: a full disk during an upload or any other write answers 507 and
one line (never the catch-all 500), and a failed ingest is retried from the Ingest tab's button
(the same action as `lora-pipeline ingest retry`)."""

from __future__ import annotations

import errno
import io
import os
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from starlette.testclient import TestClient

from lora_pipeline.errors import DISK_FULL
from lora_pipeline.media import store
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Source
from lora_pipeline.review import decoding
from lora_pipeline.review.app import create_app
from lora_pipeline.review.views import ingest as ingest_views
from lora_pipeline_tests.review.conftest import Studio, app_client

JSON = {"accept": "application/json"}


def _full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _png(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client: TestClient, token: str, headers: dict[str, str] | None = None):
    return client.post(
        "/ingest",
        data={"csrf_token": token, "mode": "single", "character": "aiko"},
        files={"file": ("still.png", _png(), "image/png")},
        headers=headers or {},
    )


def _quiet_client(studio: Studio) -> TestClient:
    """A client that gets the app's answer to an error instead of the exception itself."""
    return app_client(create_app(studio.settings), raise_server_exceptions=False)


def _left_behind(studio: Studio) -> list[Path]:
    uploads = studio.root.path("uploads")
    images = studio.root.path("images")
    return [p for folder in (uploads, images) if folder.exists() for p in folder.rglob("*.*")]


def _error_log(studio: Studio) -> str:
    path = studio.settings.home / "logs" / "review-app.log"
    return path.read_text() if path.exists() else ""


def test_a_full_disk_while_an_upload_is_copied_in_is_507_in_one_line(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_views.shutil, "copyfileobj", _full)
    with _quiet_client(studio) as client:
        token = studio.csrf(client)
        answer = _upload(client, token, JSON)
        assert answer.status_code == 507
        assert answer.json() == {"ok": False, "error": f"cannot save: {DISK_FULL}"}
        page = _upload(client, token)
    assert page.status_code == 507 and "The disk is full" in page.text
    assert DISK_FULL in page.text and "Something went wrong" not in page.text
    # Not a bug: no error id, nothing in the error log; and nothing left in the data root.
    assert "error_id" not in answer.json() and _error_log(studio) == ""
    assert _left_behind(studio) == []
    with studio.registry.session() as session:
        assert session.scalars(select(Source)).all() == []


def test_a_full_disk_while_an_upload_is_stored_is_507_naming_the_file(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    # store_upload turns the OSError into its one-line UploadError: still the disk's fault.
    monkeypatch.setattr(store, "atomic_write_bytes", _full)
    with _quiet_client(studio) as client:
        answer = _upload(client, studio.csrf(client), JSON)
    assert answer.status_code == 507
    assert answer.json()["error"] == f"still.png: {DISK_FULL}"
    assert _left_behind(studio) == [] and _error_log(studio) == ""


def test_a_full_disk_while_a_thumbnail_is_written_is_507(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id = studio.add_image("aiko", 1)

    @contextmanager
    def no_room(target: Path):
        _full()
        yield target

    monkeypatch.setattr(decoding, "atomic_path", no_room)
    with _quiet_client(studio) as client:
        answer = client.get(f"/images/{image_id}/thumb", headers=JSON)
        page = client.get(f"/images/{image_id}/thumb")
    assert answer.status_code == 507 and answer.json()["error"] == f"cannot save: {DISK_FULL}"
    assert page.status_code == 507 and DISK_FULL in page.text
    assert _error_log(studio) == ""


def test_a_full_registry_database_is_507(studio: Studio, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own "database or disk is full" (a real one, from a database capped in pages),
    raised through SQLAlchemy while an image is approved."""
    import sqlalchemy

    capped = sqlalchemy.create_engine(f"sqlite:///{studio.settings.home / 'capped.db'}")
    with capped.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE t (data BLOB)")
        connection.exec_driver_sql("PRAGMA max_page_count = 3")
        with pytest.raises(sqlalchemy.exc.OperationalError, match="full") as raised:
            connection.exec_driver_sql("INSERT INTO t VALUES (zeroblob(100000))")
    capped.dispose()
    full = raised.value

    def approve(*args: object, **kwargs: object) -> None:
        raise full

    image_id = studio.add_image("aiko", 1)
    monkeypatch.setattr(commands, "approve_image", approve)
    with _quiet_client(studio) as client:
        answer = client.post(
            f"/images/{image_id}/approve", data={"csrf_token": studio.csrf(client)}, headers=JSON
        )
    assert answer.status_code == 507 and answer.json()["error"] == f"cannot save: {DISK_FULL}"


def test_any_other_os_error_is_still_the_catch_all_500(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ingest_views.shutil, "copyfileobj", denied)
    with _quiet_client(studio) as client:
        answer = _upload(client, studio.csrf(client), JSON)
    assert answer.status_code == 500
    assert answer.json()["error_id"] in _error_log(studio)


# --- the Retry button --------------------------------------------------------------------------


def _failed_source(studio: Studio, reason: str = "cannot download: no data for 20 s") -> int:
    with studio.registry.session() as session:
        source = commands.create_source(session, "show", "url", "https://example.com/v", "aiko")
        commands.set_source_state(session, source.id, "failed", error=reason)
        return source.id


def _state(studio: Studio, source_id: int) -> tuple[str, str | None]:
    with studio.registry.session() as session:
        source = session.get(Source, source_id)
        return source.state, source.error


def _retry_forms(page: str) -> list[str]:
    return re.findall(r'action="/ingest/(\d+)/retry"', page)


def test_a_failed_source_has_a_retry_button_that_queues_it_again(studio: Studio) -> None:
    failed = _failed_source(studio)
    with studio.registry.session() as session:
        pending = commands.create_source(session, "show", "url", "https://example.com/w", "aiko")
        pending_id = pending.id
    page = studio.client.get("/ingest").text
    assert _retry_forms(page) == [str(failed)]  # only the failed one has a button
    form = page[page.index(f'action="/ingest/{failed}/retry"') :]
    assert f'name="csrf_token" value="{studio.csrf()}"' in form[: form.index("</form>")]

    answer = studio.client.post(
        f"/ingest/{failed}/retry", data={"csrf_token": studio.csrf()}, follow_redirects=False
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/ingest?retried={failed}"
    assert _state(studio, failed) == ("pending", None)
    after = studio.client.get(answer.headers["location"]).text
    assert f"Ingest request {failed} queued again" in after and _retry_forms(after) == []
    assert _state(studio, pending_id) == ("pending", None)


def test_retry_answers_json_and_refuses_what_is_not_failed(studio: Studio) -> None:
    failed = _failed_source(studio)
    token = studio.csrf()
    answer = studio.client.post(f"/ingest/{failed}/retry", data={"csrf_token": token}, headers=JSON)
    assert answer.json() == {"ok": True, "source_id": failed, "state": "pending"}
    with studio.registry.session() as session:
        commands.set_source_state(session, failed, "done")
    refused = studio.client.post(
        f"/ingest/{failed}/retry", data={"csrf_token": token}, headers=JSON
    )
    assert refused.status_code == 409
    message = f"source {failed} is done: only a failed source can be retried"
    assert refused.json()["error"] == message
    for missing, status in ((999, 404), (0, 404), (2**63, 404)):
        answer = studio.client.post(
            f"/ingest/{missing}/retry", data={"csrf_token": token}, headers=JSON
        )
        assert answer.status_code == status and "\n" not in answer.json()["error"]
    assert _state(studio, failed) == ("done", None)


def test_retry_needs_the_csrf_token_and_the_apps_own_origin(studio: Studio) -> None:
    failed = _failed_source(studio)
    token = studio.csrf()
    assert studio.client.post(f"/ingest/{failed}/retry", data={}).status_code == 403
    foreign = studio.client.post(
        f"/ingest/{failed}/retry",
        data={"csrf_token": token},
        headers={"origin": "http://127.0.0.1:9999"},
    )
    assert foreign.status_code == 403
    assert _state(studio, failed)[0] == "failed"


# --- what an upload may not do -----------------------------------------------------------------


def test_a_playlist_upload_is_refused_in_one_line(studio: Studio, tmp_path: Path) -> None:
    from lora_pipeline.media.video import make_synthetic_video

    secret = make_synthetic_video(tmp_path / "private" / "elsewhere.mp4", 1.0, 64, 48, scenes=1)
    playlist = f"#EXTM3U\n#EXTINF:1,\n{secret}\n#EXT-X-ENDLIST\n".encode()
    answer = studio.client.post(
        "/ingest",
        data={"csrf_token": studio.csrf(), "mode": "single", "character": "aiko"},
        files={"file": ("clip.m3u8", playlist, "application/vnd.apple.mpegurl")},
        headers=JSON,
    )
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert "playlist or manifest" in message and "\n" not in message
    assert _left_behind(studio) == []
    with studio.registry.session() as session:
        assert session.scalars(select(Source)).all() == []


def test_a_refused_upload_leaves_nothing_in_the_data_root(studio: Studio) -> None:
    answer = studio.client.post(
        "/ingest",
        data={"csrf_token": studio.csrf(), "mode": "single", "character": "aiko", "fps": "500"},
        files={"file": ("still.png", _png(), "image/png")},
        headers=JSON,
    )
    assert answer.status_code == 400 and "fps" in answer.json()["error"]
    assert _left_behind(studio) == []


def test_the_app_sweeps_what_crashed_uploads_left_when_it_starts(studio: Studio) -> None:
    incoming = studio.root.path("uploads/incoming")
    leftover = incoming / "tmpcrash" / "upload.mp4"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an upload")
    old = 1_000_000_000  # 2001: long before any upload in progress
    os.utime(leftover, (old, old))
    os.utime(leftover.parent, (old, old))
    create_app(studio.settings)
    assert not leftover.parent.exists()
