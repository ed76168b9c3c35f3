"""The Releases page judges a release: the eval grid at full size with labels in the page,
scores against their thresholds, what was not measured, and an unverified gate that only an
explicit override (reason + reviewer, behind the CSRF check) gets past."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import LoraRelease
from lora_pipeline_tests.review.conftest import Studio
from lora_pipeline_tests.review.test_releases import (
    JSON,
    add_release,
    card_text,
    png_bytes,
    post,
    status_of,
)

PROMPTS = ["aikochan, portrait, looking at viewer", "aikochan, full body, standing"]
STRENGTHS = [0.0, 0.6, 0.8, 1.0]
BLIND = {"identity": None, "clip_score": None, "quality": 0.93, "lora_effect": 0.0123}
REASON = "identity model not installed yet; checked the grid by eye"


def add_unverified_eval(studio: Studio, release_id: int) -> int:
    """An eval as evaluation.service records it when no identity or CLIP model is set."""
    cells = []
    for p, _prompt in enumerate(PROMPTS):
        for s, strength in enumerate(STRENGTHS):
            path = f"evals/aiko/{release_id}/1/cell-{p}{s}-{strength}.png"
            studio.root.write_bytes_atomic(path, png_bytes((40 * s, 80 + 60 * p, 120)))
            cells.append(path)
    grid = f"evals/aiko/{release_id}/1/grid.png"
    studio.root.write_bytes_atomic(grid, png_bytes())
    settings = {
        "spec": {"prompts": PROMPTS, "seeds": [7], "strengths": STRENGTHS},
        "thresholds": {
            "min_identity": None,
            "min_clip_score": None,
            "min_quality": 0.5,
            "min_lora_effect": 0.002,
        },
    }
    reasons = ["identity and clip_score not measured: nothing says it draws the character"]
    scores = {
        **BLIND,
        "gate_reasons": reasons,
        "best_epoch": 2,
        "per_epoch": {"1": {**BLIND, "lora_effect": 0.004}, "2": BLIND},
    }
    with studio.registry.session() as session:
        row = commands.record_eval(session, release_id, settings, grid, cells, scores, "unverified")
        return row.id


def test_the_releases_page_shows_the_grid_scores_thresholds_and_what_was_not_measured(
    studio: Studio,
) -> None:
    release_id = add_release(studio)
    eval_id = add_unverified_eval(studio, release_id)
    page = html.unescape(studio.client.get("/releases?character=aiko").text)
    assert "unverified" in page and "Not measured:</strong> identity, clip_score" in page
    assert "<td>quality</td><td>0.93</td><td>≥ 0.5</td><td>ok</td>" in page
    assert "<td>identity</td><td>not measured</td><td>not gated</td><td>not measured</td>" in page
    # Every label is text in the page; every cell is its own full-size image.
    for prompt in PROMPTS:
        assert f'<th class="prompt">{prompt}</th>' in page
    for label in ("no LoRA", "LoRA 0.6", "LoRA 0.8", "LoRA 1"):
        assert f"<th>{label}</th>" in page
    for index in range(len(PROMPTS) * len(STRENGTHS)):
        assert f'src="/evals/{eval_id}/cells/{index}"' in page
    assert "2 (released)" in page  # the per-epoch comparison
    cell = studio.client.get(f"/evals/{eval_id}/cells/7")
    assert cell.status_code == 200 and cell.headers["content-type"] == "image/png"
    assert studio.client.get(f"/evals/{eval_id}/cells/8").status_code == 404
    body = studio.client.get("/releases.json?character=aiko").json()
    row = body["characters"][0]["releases"][0]
    assert row["needs_override"] is True
    assert row["eval"]["not_measured"] == ["identity", "clip_score"]


def test_an_unverified_release_is_approved_only_with_a_recorded_override(studio: Studio) -> None:
    release_id = add_release(studio)
    eval_id = add_unverified_eval(studio, release_id)
    page = studio.client.get("/releases?character=aiko").text
    assert 'name="override_reason" required' in page and 'name="reviewer" required' in page
    plain = post(studio, f"/releases/{release_id}/approve", headers=JSON)
    assert plain.status_code == 409 and "needs an explicit override" in plain.json()["error"]
    no_name = post(studio, f"/releases/{release_id}/approve", {"override_reason": REASON})
    assert no_name.status_code == 409 and status_of(studio, release_id) == "candidate"
    # The form's CSRF token is checked before anything: without it, 403 and nothing changes.
    forged = studio.client.post(
        f"/releases/{release_id}/approve",
        data={"override_reason": REASON, "reviewer": "mika"},
        follow_redirects=False,
    )
    assert forged.status_code == 403 and status_of(studio, release_id) == "candidate"
    done = post(
        studio,
        f"/releases/{release_id}/approve",
        {"override_reason": REASON, "reviewer": "mika", "character": "aiko"},
    )
    assert done.status_code == 303 and status_of(studio, release_id) == "approved"
    with studio.registry.session() as session:
        release = session.get(LoraRelease, release_id)
        assert (release.gate_override_by, release.gate_override_reason) == ("mika", REASON)
        assert release.gate_override_eval_id == eval_id
    card = card_text(studio, "aiko", 1)
    assert "**unverified**" in card
    assert "**Gate overridden** by mika on " in card and f"(eval {eval_id}): {REASON}" in card
    page = html.unescape(studio.client.get("/releases?character=aiko").text)
    assert "Gate overridden by mika on" in page and 'name="override_reason"' not in page
    # Activation of the same eval needs no second override.
    assert post(studio, f"/releases/{release_id}/activate", headers=JSON).json()["ok"] is True


def test_in_chromium_an_unverified_release_is_approved_only_with_an_override(
    studio: Studio, tmp_path: Path, browser
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from lora_pipeline.review.app import background_server

    release_id = add_release(studio)
    eval_id = add_unverified_eval(studio, release_id)
    with background_server(studio.app) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/releases?character=aiko")
        detail = page.locator(f"#eval-{eval_id}")
        sync_api.expect(detail.locator(".verdict")).to_have_text("unverified")
        sync_api.expect(detail.locator(".not-measured")).to_contain_text("identity, clip_score")
        sync_api.expect(detail.locator("table.eval-grid th.prompt").first).to_have_text(PROMPTS[0])
        # The cells are shown at their own size, not squeezed into a thumbnail.
        cell = detail.locator("table.eval-grid img").first
        sync_api.expect(cell).to_be_visible()
        assert page.evaluate("img => img.naturalWidth", cell.element_handle()) == 48
        page.screenshot(path=str(tmp_path / "releases-unverified.png"), full_page=True)
        form = page.locator(f'form[action="/releases/{release_id}/approve"]')
        # The browser itself refuses an empty reason: the form is required.
        form.locator("button").click()
        assert status_of(studio, release_id) == "candidate"
        form.locator('input[name="override_reason"]').fill(REASON)
        form.locator('input[name="reviewer"]').fill("mika")
        form.locator("button").click()
        sync_api.expect(page.locator(".notice")).to_contain_text(
            f"Release {release_id} is now approved."
        )
        sync_api.expect(page.locator(".gate-override")).to_contain_text("Gate overridden by mika")
        page.screenshot(path=str(tmp_path / "releases-overridden.png"), full_page=True)
    assert status_of(studio, release_id) == "approved"
    assert f"(eval {eval_id}): {REASON}" in card_text(studio, "aiko", 1)
