"""Actions of the review app: decisions, generation requests, stuck jobs, ingest, suggestions."""

from __future__ import annotations

import html
import io
from datetime import timedelta

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from lora_pipeline.generation_settings import MAX_SEED
from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.models import (
    Character,
    Feedback,
    GenerationJob,
    Image,
    PromptSuggestion,
    Source,
    utcnow,
)
from lora_pipeline.review.app import create_app
from lora_pipeline_tests.review.conftest import Studio, app_client

JSON = {"accept": "application/json"}


def post(studio: Studio, path: str, data: dict | None = None, **kwargs):
    return studio.client.post(
        path, data={"csrf_token": studio.csrf(), **(data or {})}, follow_redirects=False, **kwargs
    )


def image_row(studio: Studio, image_id: int) -> Image:
    with studio.registry.session() as session:
        return session.get(Image, image_id)


def feedback_of(studio: Studio, image_id: int) -> Feedback:
    with studio.registry.session() as session:
        return session.scalar(select(Feedback).where(Feedback.image_id == image_id))


def design_prompt(studio: Studio, slug: str) -> str:
    with studio.registry.session() as session:
        return commands.get_character(session, slug).design_prompt


# --- approve and reject -----------------------------------------------------------------------


def test_approve_redirects_back_to_the_filtered_queue(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = post(
        studio, f"/images/{image_id}/approve", {"reviewer": "alice", "character": "aiko"}
    )
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"/approve?character=aiko&reviewer=alice&done={image_id}&outcome=approved"
    )
    row = image_row(studio, image_id)
    assert (row.status, row.reviewed_by) == ("approved", "alice")
    page = studio.client.get(response.headers["location"]).text
    assert f"Image {image_id} approved." in page and 'value="alice"' in page


def test_reject_stores_categories_notes_and_negative_terms(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = post(
        studio,
        f"/images/{image_id}/reject",
        {
            "category": ["wrong_style", "bad_quality"],
            "notes": "too noisy",
            # The edit box holds the current prompt: unchanged, it is not an edit.
            "prompt_edit": "teal hair, yellow raincoat",
            "reviewer": "bob",
        },
        headers=JSON,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] and body["status"] == "rejected"
    assert "wrong art style, blurry, low quality" in body["message"]
    feedback = feedback_of(studio, image_id)
    assert feedback.categories == ["wrong_style", "bad_quality"]
    assert feedback.negative_terms == ["wrong art style", "blurry", "low quality"]
    assert (feedback.notes, feedback.reviewer, feedback.prompt_edit) == ("too noisy", "bob", None)
    assert image_row(studio, image_id).status == "rejected"
    assert design_prompt(studio, "aiko") == "teal hair, yellow raincoat"


def test_reject_with_a_prompt_edit_changes_the_design_prompt(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = post(
        studio,
        f"/images/{image_id}/reject",
        {"category": "wrong_appearance", "prompt_edit": "teal bob cut, yellow raincoat"},
    )
    assert response.status_code == 303
    assert feedback_of(studio, image_id).prompt_edit == "teal bob cut, yellow raincoat"
    assert design_prompt(studio, "aiko") == "teal bob cut, yellow raincoat"


def test_reject_uses_the_configured_negative_table(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_NEGATIVE_TERMS", '{"not_solo": ["2girls", "group"]}')
    image_id = studio.add_image("aiko", 1)
    post(studio, f"/images/{image_id}/reject", {"category": ["not_solo", "wrong_pose"]})
    assert feedback_of(studio, image_id).negative_terms == [
        "2girls",
        "group",
        "awkward pose",
        "unnatural pose",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "at least one category or a note"),
        ({"category": "too_cute"}, "unknown rejection category 'too_cute'"),
    ],
)
def test_invalid_rejection_is_refused_and_the_image_stays_pending(
    studio: Studio, data: dict, message: str
) -> None:
    image_id = studio.add_image("aiko", 1)
    page = post(studio, f"/images/{image_id}/reject", data)
    assert page.status_code == 400 and message in html.unescape(page.text)
    as_json = post(studio, f"/images/{image_id}/reject", data, headers=JSON)
    assert as_json.status_code == 400 and message in as_json.json()["error"]
    assert image_row(studio, image_id).status == "pending"


def test_second_decision_gets_409_and_the_first_outcome_stands(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    other = studio.new_client()
    assert post(studio, f"/images/{image_id}/approve", {"reviewer": "alice"}).status_code == 303
    # Another reviewer, in another browser, had the same image on screen.
    late = other.post(
        f"/images/{image_id}/reject",
        data={"csrf_token": studio.csrf(other), "category": "bad_quality", "reviewer": "bob"},
    )
    assert late.status_code == 409
    assert f"image {image_id} was already approved by alice" in html.unescape(late.text)
    as_json = other.post(
        f"/images/{image_id}/approve",
        data={"csrf_token": studio.csrf(other)},
        headers=JSON,
    )
    assert as_json.status_code == 409
    assert as_json.json() == {
        "ok": False,
        "error": f"image {image_id} was already approved by alice",
    }
    assert image_row(studio, image_id).status == "approved"
    assert feedback_of(studio, image_id) is None


def test_unknown_image_is_404(studio: Studio) -> None:
    response = post(studio, "/images/999/approve", headers=JSON)
    assert response.status_code == 404 and "unknown image 999" in response.json()["error"]


# --- generation requests --------------------------------------------------------------------------


def jobs(studio: Studio) -> list[GenerationJob]:
    with studio.registry.session() as session:
        return list(session.scalars(select(GenerationJob).order_by(GenerationJob.id)))


def test_generate_records_a_pending_request_with_the_overrides(studio: Studio) -> None:
    response = post(
        studio,
        "/generate",
        {
            "character": "aiko",
            "kind": "image",
            "prompt": "aiko, teal hair, running",
            "negative_prompt": "lowres",
            "seed": "42",
        },
    )
    assert response.status_code == 303
    (job,) = jobs(studio)
    assert response.headers["location"] == f"/generate?requested={job.id}"
    assert (job.status, job.kind, job.seed) == ("pending", "image", 42)
    assert (job.prompt, job.negative_prompt) == ("aiko, teal hair, running", "lowres")
    assert job.params["requested_by"] == "review"
    assert job.params["prompt_override"] == "aiko, teal hair, running"
    assert job.params["steps"] == 25 and job.params["width"] == 512
    assert "requested" in studio.client.get(response.headers["location"]).text


def test_generate_without_overrides_uses_the_character(studio: Studio) -> None:
    with studio.registry.session() as session:
        commands.update_character(session, "kenji", width=768, height=768, seed=9, seed_locked=True)
    response = post(studio, "/generate", {"character": "kenji", "kind": "video"}, headers=JSON)
    assert response.json()["status"] == "pending"
    (job,) = jobs(studio)
    assert job.prompt == "kenji, black hair, anime style"
    assert job.seed == 9 and job.kind == "video"
    # Video mode is capped at 512×512 and 16 frames.
    assert (job.params["width"], job.params["height"], job.params["frames"]) == (512, 512, 16)


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"character": "aiko", "seed": "x1"}, 400, "seed must be a whole number"),
        ({"character": "aiko", "kind": "gif"}, 400, "invalid generation kind"),
        ({"character": "nobody"}, 404, "unknown character 'nobody'"),
    ],
)
def test_invalid_generation_requests_are_refused(
    studio: Studio, data: dict, status: int, message: str
) -> None:
    response = post(studio, "/generate", data, headers=JSON)
    assert response.status_code == status and message in response.json()["error"]
    assert jobs(studio) == []


@pytest.mark.parametrize(
    ("seed", "status"),
    [("0", 200), (str(MAX_SEED), 200), ("-1", 400), (str(MAX_SEED + 1), 400)],
)
def test_the_generate_form_takes_seeds_within_the_shared_limits(
    studio: Studio, seed: str, status: int
) -> None:
    response = post(studio, "/generate", {"character": "aiko", "seed": seed}, headers=JSON)
    assert response.status_code == status
    if status == 400:
        assert response.json()["error"].startswith("seed must be between 0 and")
    else:
        assert [job.seed for job in jobs(studio)] == [int(seed)]


def test_clear_stuck_jobs_fails_old_jobs_and_stops_them_in_comfyui(studio: Studio) -> None:
    stopped: list[str] = []

    def cancel(prompt_id: str) -> str:
        stopped.append(prompt_id)
        if prompt_id == "gone":
            raise ConnectionError("ComfyUI is unreachable")
        return "interrupted"

    studio.app.state.review.cancel_prompt = cancel
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        made = [commands.create_generation_job(session, aiko.id, "p", "", n, {}) for n in range(4)]
        ids = [job.id for job in made]
        commands.mark_job(session, ids[0], "running", comfyui_prompt_id="abc")
        commands.mark_job(session, ids[1], "running", comfyui_prompt_id="gone")
        hour_ago = utcnow() - timedelta(hours=1)
        for job_id in ids[:3]:
            job = session.get(GenerationJob, job_id)
            job.created_at = job.started_at = hour_ago
    response = post(studio, "/jobs/clear-stuck", {"minutes": "10"})
    assert response.headers["location"] == "/generate?cleared=3&stopped=1&unstopped=1"
    statuses = [job.status for job in jobs(studio)]
    assert statuses == ["failed", "failed", "failed", "pending"]
    assert sorted(stopped) == ["abc", "gone"]
    page = studio.client.get(response.headers["location"]).text
    assert "3 stuck job(s) marked failed, 1 stopped in ComfyUI, 1 could not be stopped" in page
    refused = post(studio, "/jobs/clear-stuck", {"minutes": "0"}, headers=JSON)
    assert refused.status_code == 400


# --- ingest -------------------------------------------------------------------------------------


def sources(studio: Studio) -> list[Source]:
    with studio.registry.session() as session:
        return list(session.scalars(select(Source).order_by(Source.id)))


def test_ingest_url_single_character_mode(studio: Studio) -> None:
    response = post(
        studio,
        "/ingest",
        {
            "mode": "single",
            "character": "mio",
            "project": "show",  # ignored in single mode: the character's project counts
            "url": "https://www.youtube.com/watch?v=abc",
            "max_frames": "40",
            "fps": "2.5",
        },
    )
    (source,) = sources(studio)
    assert response.headers["location"] == f"/ingest?created={source.id}"
    assert (source.kind, source.mode, source.uri) == (
        "url",
        "single",
        "https://www.youtube.com/watch?v=abc",
    )
    assert (source.max_frames, source.fps, source.state) == (40, 2.5, "pending")
    with studio.registry.session() as session:
        assert session.get(Character, source.character_id).slug == "mio"


def test_ingest_project_mode(studio: Studio) -> None:
    post(studio, "/ingest", {"mode": "project", "project": "show", "url": "https://e.invalid/v"})
    (source,) = sources(studio)
    assert (source.mode, source.character_id) == ("project", None)


def test_ingest_upload_of_an_image(studio: Studio) -> None:
    buffer = io.BytesIO()
    PILImage.new("RGB", (40, 30), "teal").save(buffer, format="PNG")
    response = post(
        studio,
        "/ingest",
        {"mode": "single", "character": "aiko"},
        files={"file": ("../../evil name.png", buffer.getvalue(), "image/png")},
        headers=JSON,
    )
    assert response.json()["kind"] == "image_upload"
    (source,) = sources(studio)
    assert source.kind == "image_upload" and source.uri.startswith("images/")
    assert studio.root.path(source.uri).is_file()
    assert not any((studio.root.path("uploads/incoming")).iterdir()), "temporary files remain"


def test_ingest_upload_of_a_video(studio: Studio, tmp_path) -> None:
    video = make_synthetic_video(tmp_path / "clip.mp4", seconds=1, scenes=1)
    with video.open("rb") as handle:
        post(
            studio,
            "/ingest",
            {"mode": "project", "project": "show"},
            files={"file": ("clip.mp4", handle, "video/mp4")},
        )
    (source,) = sources(studio)
    assert source.kind == "video_upload" and source.uri.endswith(".mp4")


def test_ingest_refuses_a_file_that_is_neither_image_nor_video(studio: Studio) -> None:
    response = post(
        studio,
        "/ingest",
        {"mode": "single", "character": "aiko"},
        files={"file": ("notes.txt", b"hello", "text/plain")},
    )
    assert response.status_code == 400
    assert "neither an image nor a readable video" in html.unescape(response.text)
    assert sources(studio) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "single", "url": "https://e.invalid/v"}, "needs a character"),
        ({"mode": "single", "character": "aiko"}, "give a video URL or choose a file"),
        ({"mode": "both", "url": "https://e.invalid/v"}, "invalid ingest mode"),
        ({"mode": "single", "character": "aiko", "url": "ftp://x"}, "http:// or https://"),
        ({"mode": "single", "character": "aiko", "url": "https://e/v", "fps": "fast"}, "fps"),
    ],
)
def test_invalid_ingest_requests_are_refused(studio: Studio, data: dict, message: str) -> None:
    response = post(studio, "/ingest", data, headers=JSON)
    assert response.status_code == 400 and message in response.json()["error"]
    assert sources(studio) == []


def test_upload_over_the_limit_is_cut_off_while_streaming(studio: Studio) -> None:
    # The same registry, with a smaller upload limit.
    client = app_client(create_app(studio.settings, max_upload_bytes=100_000))
    token = studio.csrf(client)

    def body():
        # A chunked body has no Content-Length: only counting the stream can stop it.
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="csrf_token"\r\n\r\n'
        yield token.encode() + b"\r\n" + boundary
        yield b'Content-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(50):
            yield b"\0" * 10_000
        yield b"\r\n--xyz--\r\n"

    response = client.post(
        "/ingest",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=xyz", **JSON},
    )
    assert response.status_code == 413
    assert "over the" in response.json()["error"]
    declared = client.post(
        "/ingest",
        content=b"x" * 200_000,
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert declared.status_code == 413
    assert sources(studio) == []


def test_forms_have_a_small_body_limit(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = post(studio, f"/images/{image_id}/reject", {"notes": "x" * 2_000_000})
    assert response.status_code == 413
    assert image_row(studio, image_id).status == "pending"


# --- suggestions --------------------------------------------------------------------------------


def open_suggestion(studio: Studio, prompt: str = "solo, (teal hair:1.2)") -> int:
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        return suggestions.add_prompt_suggestion(session, aiko.id, prompt, "why", "builtin").id


def test_accepting_a_suggestion_updates_the_design_prompt(studio: Studio) -> None:
    suggestion_id = open_suggestion(studio)
    response = post(studio, f"/suggestions/{suggestion_id}/accept", {"next": "/#character-aiko"})
    assert response.headers["location"] == f"/#character-aiko?accepted={suggestion_id}"
    assert design_prompt(studio, "aiko") == "solo, (teal hair:1.2)"
    with studio.registry.session() as session:
        assert session.get(PromptSuggestion, suggestion_id).status == "accepted"
    again = post(studio, f"/suggestions/{suggestion_id}/accept", headers=JSON)
    assert again.status_code == 409
    assert again.json()["error"] == f"prompt suggestion {suggestion_id} is already accepted"


def test_dismissing_a_suggestion_keeps_the_prompt(studio: Studio) -> None:
    suggestion_id = open_suggestion(studio)
    response = post(studio, f"/suggestions/{suggestion_id}/dismiss", headers=JSON)
    assert response.json()["status"] == "dismissed"
    assert design_prompt(studio, "aiko") == "teal hair, yellow raincoat"


def test_suggestion_redirect_stays_on_this_site(studio: Studio) -> None:
    suggestion_id = open_suggestion(studio)
    response = post(studio, f"/suggestions/{suggestion_id}/dismiss", {"next": "//evil.example/"})
    assert response.headers["location"] == f"/?dismissed={suggestion_id}"
