"""Every page of the review app renders what the registry holds."""

from __future__ import annotations

import re

from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.models import GenerationProfile, Image, Model
from lora_pipeline_tests.review.conftest import Studio

PARAMS = {"seed": 1234, "sampler": "dpmpp_2m", "scheduler": "karras", "steps": 20, "cfg": 6.5}


def card_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="card" data-image-id="(\d+)"', html)]


def test_characters_page_shows_counts_checkpoint_progress_release(studio: Studio) -> None:
    approved = [studio.add_image("aiko", n) for n in range(3)]
    studio.add_image("aiko", 10)
    with studio.registry.session() as session:
        for image_id in approved:
            commands.approve_image(session, image_id)
        aiko = commands.get_character(session, "aiko")
        commands.register_lora_release(
            session, aiko.id, None, "loras/aiko.safetensors", "a" * 64, "tiny", {}
        )
        # The other project generates with its own checkpoint (a generation profile).
        other = commands.get_project(session, "other")
        model = Model(name="illustrious-xl", kind="checkpoint", path="ckpt/ill.safetensors")
        session.add(model)
        session.flush()
        session.add(GenerationProfile(project_id=other.id, name="default", checkpoint_id=model.id))
    html = studio.client.get("/").text
    aiko_card = html[html.index('id="character-aiko"') : html.index('id="character-kenji"')]
    assert "The Show" in aiko_card
    assert "4 — " in aiko_card and "3 approved" in aiko_card and "1 pending" in aiko_card
    assert "anime-v3.safetensors" in aiko_card  # the studio's base model
    assert "teal hair, yellow raincoat" in aiko_card
    assert '<progress max="10" value="3">' in aiko_card and "3 / 10 approved" in aiko_card
    assert "release 1 (candidate)" in aiko_card
    mio_card = html[html.index('id="character-mio"') :]
    assert "illustrious-xl" in mio_card and "none yet" in mio_card


def test_characters_page_offers_the_open_suggestion(studio: Studio) -> None:
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        row = suggestions.add_prompt_suggestion(
            session, aiko.id, "solo, (teal hair:1.2)", "3 rejections: not_solo", "builtin"
        )
    html = studio.client.get("/").text
    assert "solo, (teal hair:1.2)" in html and "3 rejections: not_solo" in html
    assert f'action="/suggestions/{row.id}/accept"' in html


def test_approve_queue_lists_pending_images_with_metadata(studio: Studio) -> None:
    first = studio.add_image("aiko", 1, params=PARAMS)
    second = studio.add_image("kenji", 2, origin="frame")
    studio.add_image("aiko", 3, status="approved")
    html = studio.client.get("/approve").text
    assert card_ids(html) == [first, second]
    assert "2 shown, 2 pending" in html
    card = html[html.index(f'data-image-id="{first}"') : html.index(f'data-image-id="{second}"')]
    for shown in ("Aiko", "show", "teal hair, yellow raincoat", "1234", "dpmpp_2m / karras"):
        assert shown in card
    assert "anime-v3.safetensors" in card  # the checkpoint the image was generated with
    # The card shows the thumbnail and links the full image.
    assert f'src="/images/{first}/thumb"' in card and f'href="/images/{first}"' in card
    for category in commands.REJECTION_CATEGORIES:
        assert f'value="{category}"' in card


def test_approve_queue_filters_by_project_and_character(studio: Studio) -> None:
    aiko = studio.add_image("aiko", 1)
    kenji = studio.add_image("kenji", 2)
    mio = studio.add_image("mio", 3)
    assert card_ids(studio.client.get("/approve?project=show").text) == [aiko, kenji]
    assert card_ids(studio.client.get("/approve?character=mio").text) == [mio]
    assert card_ids(studio.client.get("/approve?project=other&character=mio").text) == [mio]
    wrong = studio.client.get("/approve?project=other&character=aiko")
    assert wrong.status_code == 400 and "not in project" in wrong.text
    assert studio.client.get("/approve?project=nope").status_code == 404


def test_empty_queue_says_what_to_do(studio: Studio) -> None:
    assert "No pending images — generate some or run an ingestion" in (
        studio.client.get("/approve").text
    )


def test_gallery_lists_generated_images_newest_first(studio: Studio) -> None:
    older = studio.add_image("aiko", 1, params=PARAMS)
    studio.add_image("aiko", 2, origin="frame")  # not a generated image
    newer = studio.add_image("kenji", 3, origin="comfyui", status="approved")
    html = studio.client.get("/gallery").text
    ids = [int(i) for i in re.findall(r'href="/gallery/(\d+)"', html)]
    assert ids == [newer, older]
    with studio.registry.session() as session:
        path = session.get(Image, older).path
    size = (studio.root.path(path)).stat().st_size
    assert path.rsplit("/", 1)[1] in html  # file name
    assert f"{size} B" in html
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", html)


def test_gallery_full_size_view(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1, params=PARAMS)
    html = studio.client.get(f"/gallery/{image_id}").text
    assert f'<img class="full" src="/images/{image_id}"' in html
    assert "32×24" in html and "1234" in html
    assert studio.client.get("/gallery/999").status_code == 404


def test_image_is_served_by_registry_id(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = studio.client.get(f"/images/{image_id}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


def test_generate_page_lists_characters_settings_and_jobs(studio: Studio) -> None:
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        job = commands.create_generation_job(session, aiko.id, "aiko", "", 7, {})
        commands.mark_job(session, job.id, "failed", error="out of memory")
    html = studio.client.get("/generate?character=kenji").text
    assert '<option value="kenji" selected' in html
    assert "cfg 7.0 · 25 steps · euler/normal · 512×512" in html
    row = html[html.index(f'data-job-id="{job.id}"') :]
    assert "failed" in row and "out of memory" in row
    jobs = studio.client.get("/jobs.json").json()["jobs"]
    assert jobs[0]["id"] == job.id and jobs[0]["status"] == "failed"


def test_ingest_page_lists_targets_and_requests(studio: Studio) -> None:
    with studio.registry.session() as session:
        commands.create_source(session, "other", "url", "https://example.invalid/v", mode="project")
    html = studio.client.get("/ingest").text
    assert 'enctype="multipart/form-data"' in html
    assert '<option value="mio">Mio (other)</option>' in html
    assert "https://example.invalid/v" in html and "pending" in html


def test_pages_escape_registry_text(studio: Studio) -> None:
    with studio.registry.session() as session:
        commands.update_design_prompt(session, "aiko", "<script>alert(1)</script>")
    studio.add_image("aiko", 1)
    for path in ("/", "/approve"):
        html = studio.client.get(path).text
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
