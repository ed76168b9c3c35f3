"""The Releases tab: listing, approve/activate/reject/deactivate behind the evaluation gate, the
eval grid served from the data root, and video job outputs on the Generate tab."""

from __future__ import annotations

import html
import io
import os
import re
from pathlib import Path

import pytest
from PIL import Image as PILImage

from lora_pipeline.evaluation import releases
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline_tests.review.conftest import Studio

JSON = {"accept": "application/json"}
PASSING = {"identity": 0.71, "clip_score": 29.5, "quality": 0.9, "lora_effect": 0.012}


def png_bytes(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (48, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def add_release(
    studio: Studio,
    slug: str = "aiko",
    n: int = 1,
    checkpoint: str = "anime-v3",
    dataset: str | None = None,
    **kwargs,
) -> int:
    with studio.registry.session() as session:
        character = commands.get_character(session, slug)
        version_id = None
        if dataset is not None:
            manifest = {"images": [{"sha256": "a" * 64}] * 3}
            version, _ = commands.record_dataset_version(
                session, character.id, dataset, manifest, f"datasets/{slug}/{dataset}.json"
            )
            version_id = version.id
        release = commands.register_lora_release(
            session,
            character.id,
            version_id,
            f"loras/{slug}/{slug}-v{n}.safetensors",
            f"{n:064x}",
            checkpoint,
            {"rank": 4},
            **kwargs,
        )
        return release.id


def add_eval(
    studio: Studio,
    release_id: int,
    verdict: str,
    reasons: tuple[str, ...] = (),
    grid_path: str | None = None,
) -> int:
    if grid_path is None:
        grid_path = f"evals/{release_id}/grid.png"
        studio.root.write_bytes_atomic(grid_path, png_bytes())
    scores = {**PASSING, "clip_score": None, "gate_reasons": list(reasons)}
    with studio.registry.session() as session:
        row = commands.record_eval(session, release_id, {}, grid_path, [], scores, verdict)
        return row.id


def status_of(studio: Studio, release_id: int) -> str:
    with studio.registry.session() as session:
        return session.get(LoraRelease, release_id).status


def card_text(studio: Studio, slug: str, n: int) -> str:
    return studio.root.path(f"loras/{slug}/{slug}-v{n}.model-card.md").read_text()


def post(studio: Studio, path: str, data: dict | None = None, **kwargs):
    return studio.client.post(
        path, data={"csrf_token": studio.csrf(), **(data or {})}, follow_redirects=False, **kwargs
    )


def row_html(page: str, release_id: int) -> str:
    start = page.index(f'data-release-id="{release_id}"')
    return page[start : page.index("</tr>", start)]


def buttons(page: str, release_id: int) -> list[str]:
    return re.findall(rf'action="/releases/{release_id}/(\w+)"', row_html(page, release_id))


# --- the page ---------------------------------------------------------------------------------


def test_releases_page_lists_each_characters_releases_newest_first(studio: Studio) -> None:
    first = add_release(studio, n=1, dataset="0123456789abcdef")
    add_eval(studio, first, "fail", ("identity 0.31 < 0.5", "quality not measured"))
    second = add_release(studio, n=2, scope="baseline", parent_release_id=first)
    mio = add_release(studio, "mio", n=3, checkpoint="illustrious-xl")
    page = studio.client.get("/releases").text
    aiko = page[page.index('id="releases-aiko"') : page.index('id="releases-kenji"')]
    assert re.findall(r'data-release-id="(\d+)"', aiko) == [str(second), str(first)]
    failed = html.unescape(row_html(aiko, first))
    for shown in ("candidate", "project", "anime-v3", "0123456789ab (3 images)", "fail", "0.012"):
        assert shown in failed, shown
    assert "clip_score</dt><dd>not measured" in failed
    assert "identity 0.31 < 0.5" in failed and "quality not measured" in failed
    with studio.registry.session() as session:
        grid_eval = queries.latest_eval(session, first).id
    assert f'<img class="thumb" src="/evals/{grid_eval}/grid"' in failed
    newer = row_html(aiko, second)
    assert "baseline" in newer and "not evaluated yet" in newer and "continues 1" in newer
    assert "not recorded" in newer  # no dataset version
    assert "<img" not in newer
    assert buttons(page, first) == ["approve", "activate", "reject"]
    kenji = page[page.index('id="releases-kenji"') : page.index('id="releases-mio"')]
    assert "No releases yet" in kenji
    assert f'data-release-id="{mio}"' in page[page.index('id="releases-mio"') :]
    assert '<a href="/releases" class="active" aria-current="page">Releases</a>' in page


def test_characters_page_links_each_character_to_its_releases(studio: Studio) -> None:
    page = studio.client.get("/").text
    for slug in ("aiko", "kenji", "mio"):
        assert f'<a href="/releases?character={slug}">Releases</a>' in page
    assert '<a href="/releases">Releases</a>' in page  # the nav


def test_releases_page_filters_by_character(studio: Studio) -> None:
    add_release(studio, n=1)
    mio = add_release(studio, "mio", n=2)
    page = studio.client.get("/releases?character=mio").text
    assert re.findall(r'data-release-id="(\d+)"', page) == [str(mio)]
    assert 'id="releases-aiko"' not in page
    missing = studio.client.get("/releases?character=ghost")
    assert missing.status_code == 404 and "unknown character &#39;ghost&#39;" in missing.text


def test_releases_json(studio: Studio) -> None:
    release_id = add_release(studio, n=1)
    eval_id = add_eval(studio, release_id, "pass")
    body = studio.client.get("/releases.json?character=aiko").json()
    (aiko,) = body["characters"]
    (row,) = aiko["releases"]
    assert (aiko["slug"], row["id"], row["status"], row["checkpoint"]) == (
        "aiko",
        release_id,
        "candidate",
        "anime-v3",
    )
    assert row["eval"]["verdict"] == "pass" and row["eval"]["grid"] == f"/evals/{eval_id}/grid"
    assert row["eval"]["scores"]["identity"] == "0.71"
    assert row["actions"] == ["approve", "activate", "reject"]


# --- decisions ----------------------------------------------------------------------------------


def test_gate_blocks_approval_with_one_message_and_nothing_changes(studio: Studio) -> None:
    release_id = add_release(studio)
    unevaluated = post(studio, f"/releases/{release_id}/approve")
    assert unevaluated.status_code == 409
    text = html.unescape(unevaluated.text)
    assert f"release {release_id} has not been evaluated yet" in text
    assert text.count('role="alert"') == 1
    add_eval(studio, release_id, "fail", ("identity 0.31 < 0.5",))
    for action in ("approve", "activate"):
        page = post(studio, f"/releases/{release_id}/{action}", {"character": "aiko"})
        assert page.status_code == 409
        assert "did not pass the evaluation gate" in html.unescape(page.text)
        assert "identity 0.31 < 0.5" in html.unescape(page.text)
        as_json = post(studio, f"/releases/{release_id}/{action}", headers=JSON)
        assert as_json.status_code == 409 and as_json.json()["ok"] is False
        assert "did not pass the evaluation gate" in as_json.json()["error"]
    assert status_of(studio, release_id) == "candidate"
    assert not studio.root.path("loras/aiko/aiko-v1.model-card.md").exists()


def test_approve_then_activate_after_a_passing_eval(studio: Studio) -> None:
    release_id = add_release(studio)
    add_eval(studio, release_id, "pass")
    response = post(studio, f"/releases/{release_id}/approve", {"character": "aiko"})
    assert response.status_code == 303
    assert response.headers["location"] == (
        f"/releases?character=aiko&done={release_id}&outcome=approved"
    )
    assert status_of(studio, release_id) == "approved"
    page = studio.client.get(response.headers["location"]).text
    assert f"Release {release_id} is now approved." in page
    assert buttons(page, release_id) == ["activate", "reject"]
    assert "| Status | approved |" in card_text(studio, "aiko", 1)
    activated = post(studio, f"/releases/{release_id}/activate", headers=JSON)
    assert activated.json() == {
        "ok": True,
        "release_id": release_id,
        "status": "active",
        "demoted": [],
        "message": f"Release {release_id} is now active.",
        "card_errors": [],
    }
    assert status_of(studio, release_id) == "active"
    assert "| Status | active |" in card_text(studio, "aiko", 1)
    assert buttons(studio.client.get("/releases").text, release_id) == ["reject", "deactivate"]


def test_activation_demotes_the_previous_active_release(studio: Studio) -> None:
    old, new, other_checkpoint = (add_release(studio, n=n) for n in (1, 2, 3))
    with studio.registry.session() as session:
        session.get(LoraRelease, other_checkpoint).base_checkpoint = "illustrious-xl"
    for release_id in (old, new, other_checkpoint):
        add_eval(studio, release_id, "pass")
    assert post(studio, f"/releases/{old}/activate").status_code == 303
    assert post(studio, f"/releases/{other_checkpoint}/activate").status_code == 303
    response = post(studio, f"/releases/{new}/activate", {"character": "aiko"})
    assert response.headers["location"] == (
        f"/releases?character=aiko&done={new}&outcome=active&demoted={old}"
    )
    page = studio.client.get(response.headers["location"]).text
    assert (
        f"Release {new} is now active. Previously active release {old} went back to approved."
        in page
    )
    assert [status_of(studio, r) for r in (old, new, other_checkpoint)] == [
        "approved",
        "active",
        "active",  # another checkpoint is another slot
    ]
    # Both changed releases have their cards rewritten.
    assert "| Status | approved |" in card_text(studio, "aiko", 1)
    assert "| Status | active |" in card_text(studio, "aiko", 2)


def test_reject_and_deactivate(studio: Studio) -> None:
    candidate, active = add_release(studio, n=1), add_release(studio, n=2)
    add_eval(studio, active, "pass")
    post(studio, f"/releases/{active}/activate")
    assert post(studio, f"/releases/{candidate}/reject").status_code == 303
    assert status_of(studio, candidate) == "rejected"
    assert post(studio, f"/releases/{active}/deactivate").status_code == 303
    assert status_of(studio, active) == "approved"
    assert "| Status | approved |" in card_text(studio, "aiko", 2)
    page = studio.client.get("/releases").text
    assert buttons(page, candidate) == []
    assert buttons(page, active) == ["activate", "reject"]
    # Reactivating an approved release needs no new eval: it passed once.
    assert post(studio, f"/releases/{active}/activate").status_code == 303
    assert status_of(studio, active) == "active"


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("candidate", "deactivate", "is candidate: only a release that is active can be"),
        ("rejected", "approve", "is rejected: only a release that is candidate can be approved"),
        ("rejected", "reject", "is already rejected"),
        ("active", "activate", "is already active"),
    ],
)
def test_transitions_that_do_not_apply_are_refused(
    studio: Studio, setup: str, action: str, message: str
) -> None:
    release_id = add_release(studio)
    add_eval(studio, release_id, "pass")
    if setup != "candidate":
        with studio.registry.session() as session:
            commands.set_release_status(session, release_id, setup)
    response = post(studio, f"/releases/{release_id}/{action}", headers=JSON)
    assert response.status_code == 409 and message in response.json()["error"]
    assert status_of(studio, release_id) == setup


def test_unknown_release_or_action_is_404(studio: Studio) -> None:
    release_id = add_release(studio)
    missing = post(studio, "/releases/999/approve", headers=JSON)
    assert missing.status_code == 404 and "unknown LoRA release 999" in missing.json()["error"]
    assert post(studio, f"/releases/{release_id}/promote", headers=JSON).status_code == 404
    assert status_of(studio, release_id) == "candidate"


def test_release_decisions_need_the_csrf_token(studio: Studio) -> None:
    release_id = add_release(studio)
    add_eval(studio, release_id, "pass")
    studio.csrf()
    for data in ({}, {"csrf_token": "forged"}):
        response = studio.client.post(f"/releases/{release_id}/activate", data=data)
        assert response.status_code == 403 and "CSRF check failed" in response.text
    assert status_of(studio, release_id) == "candidate"


def test_a_model_card_that_cannot_be_written_is_reported_and_the_decision_stands(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(registry, root, release_id: int) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(releases, "write_model_card", broken)
    release_id = add_release(studio)
    add_eval(studio, release_id, "pass")
    as_json = post(studio, f"/releases/{release_id}/approve", headers=JSON).json()
    assert as_json["ok"] and as_json["card_errors"] == [
        f"the model card of release {release_id} was not rewritten: disk full"
    ]
    response = post(studio, f"/releases/{release_id}/activate")
    assert response.headers["location"].endswith("&card=stale")
    page = studio.client.get(response.headers["location"]).text
    assert f"Release {release_id} is now active." in page
    assert "model card could not be rewritten; the server log says why" in html.unescape(page)
    assert status_of(studio, release_id) == "active"


# --- the eval grid ------------------------------------------------------------------------------


def test_eval_grid_is_served_from_the_data_root(studio: Studio) -> None:
    eval_id = add_eval(studio, add_release(studio), "pass")
    response = studio.client.get(f"/evals/{eval_id}/grid")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content == png_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/evals/../registry.db",
        "/evals/%2e%2e/registry.db",
        "/evals/1/../../registry.db",
        "/evals/1/grid/../../../registry.db",
        "/evals/..%2F..%2Fregistry.db/grid",
        "/evals/-1/grid",
        "/evals/999/grid",
    ],
)
def test_eval_grid_path_tricks_find_nothing(studio: Studio, path: str) -> None:
    add_eval(studio, add_release(studio), "pass")
    response = studio.client.get(path)
    assert response.status_code == 404, path
    assert b"SQLite" not in response.content


def test_eval_rows_pointing_outside_the_data_root_or_at_other_files_are_not_served(
    studio: Studio, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes((1, 2, 3)))
    os.symlink(secret, studio.root.dir("evals") / "link.png")
    studio.root.write_text_atomic("uploads/notes.txt", "private notes")
    release_id = add_release(studio)
    linked = add_eval(studio, release_id, "fail", grid_path="evals/link.png")
    text = add_eval(studio, release_id, "fail", grid_path="uploads/notes.txt")
    gone = add_eval(studio, release_id, "fail", grid_path="evals/gone.png")
    for eval_id in (linked, text, gone):
        response = studio.client.get(f"/evals/{eval_id}/grid")
        assert response.status_code == 404, eval_id
        assert b"private" not in response.content and response.content != png_bytes((1, 2, 3))
    # The page offers no thumbnail it would not serve.
    assert "/evals/" not in row_html(studio.client.get("/releases").text, release_id)


# --- video job outputs ------------------------------------------------------------------------


def add_job(studio: Studio, output: str | None = None, data: bytes | None = None) -> int:
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        job = commands.create_generation_job(session, aiko.id, "aiko", "", 7, {}, kind="video")
        if output is not None:
            commands.record_job_output(session, job.id, output)
        commands.mark_job(session, job.id, "completed")
        job_id = job.id
    if output is not None and data is not None:
        studio.root.write_bytes_atomic(output, data)
    return job_id


def test_video_output_is_linked_and_served(studio: Studio) -> None:
    clip = b"\x00\x00\x00\x18ftypmp42 fake clip"
    job_id = add_job(studio, "videos/aiko/job-1.mp4", clip)
    page = studio.client.get("/generate").text
    row = page[page.index(f'data-job-id="{job_id}"') :]
    assert f'<video src="/jobs/{job_id}/output" controls' in row
    assert f'<a href="/jobs/{job_id}/output" target="_blank" rel="noopener">job-1.mp4</a>' in row
    (listed,) = studio.client.get("/jobs.json").json()["jobs"]
    assert (listed["output"], listed["output_name"], listed["output_kind"]) == (
        f"/jobs/{job_id}/output",
        "job-1.mp4",
        "video",
    )
    response = studio.client.get(f"/jobs/{job_id}/output")
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert response.content == clip


def test_animated_output_is_shown_as_an_image(studio: Studio) -> None:
    job_id = add_job(studio, "videos/aiko/job-1.webp", png_bytes())
    row = studio.client.get("/generate").text
    assert f'<img src="/jobs/{job_id}/output" alt="output of job {job_id}"' in row
    assert studio.client.get(f"/jobs/{job_id}/output").headers["content-type"] == "image/webp"


def test_jobs_without_a_servable_output_are_404(studio: Studio, tmp_path: Path) -> None:
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret clip")
    studio.root.dir("videos", "aiko")
    os.symlink(secret, studio.root.path("videos/aiko/link.mp4"))
    stored = studio.root.put_image(PILImage.new("RGB", (8, 8)))
    jobs = [
        add_job(studio),  # no output recorded
        add_job(studio, "videos/aiko/missing.mp4"),  # recorded, file gone
        add_job(studio, "videos/aiko/link.mp4"),  # a symlink out of the data root
        add_job(studio, stored.relpath),  # a data-root file that is not a job output
        add_job(studio, "uploads/clip.mp4", b"uploaded clip"),  # a video outside videos/
        add_job(studio, "videos/aiko/job.bin", b"bytes"),  # not a video type
    ]
    for job_id in (*jobs, 999):
        response = studio.client.get(f"/jobs/{job_id}/output")
        assert response.status_code == 404, job_id
        assert b"secret" not in response.content and b"uploaded" not in response.content
    assert "<video" not in studio.client.get("/generate").text


def test_a_project_requiring_a_licence_refuses_approval_on_the_page(studio: Studio) -> None:
    with studio.registry.session() as session:
        commands.update_project_settings(session, "show", require_licence=True)
    release_id = add_release(studio)
    add_eval(studio, release_id, "pass")
    form = row_html(studio.client.get("/releases").text, release_id)
    assert form.count('name="licence"') == 2  # approve and activate
    assert '<td class="licence"><span class="muted">none recorded</span></td>' in form
    refused = post(studio, f"/releases/{release_id}/approve", {"character": "aiko"})
    assert refused.status_code == 409
    text = html.unescape(refused.text)
    assert "project 'show' requires a licence and none is recorded" in text
    assert text.count('role="alert"') == 1
    assert status_of(studio, release_id) == "candidate"
    done = post(studio, f"/releases/{release_id}/approve", {"licence": "CC-BY-4.0"}, headers=JSON)
    assert done.status_code == 200 and done.json()["status"] == "approved"
    with studio.registry.session() as session:
        assert session.get(LoraRelease, release_id).licence == "CC-BY-4.0"
    assert "| Licence | CC-BY-4.0 |" in card_text(studio, "aiko", 1)
    row = row_html(studio.client.get("/releases").text, release_id)
    assert '<td class="licence">CC-BY-4.0</td>' in row
    listed = studio.client.get("/releases.json").json()["characters"]
    rows = [row for group in listed for row in group["releases"] if row["id"] == release_id]
    assert rows[0]["licence"] == "CC-BY-4.0"
