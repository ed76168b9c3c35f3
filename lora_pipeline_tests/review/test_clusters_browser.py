"""The Clusters tab and "why it was assigned" in Chromium: a person labels a candidate cluster
as a new character by clicking, its crops show up pending in the Approve tab, and the viewer
(`o`) says a person named them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_pipeline.review.app import background_server
from lora_pipeline_tests.review.conftest import Studio, named_context
from lora_pipeline_tests.review.test_clusters_tab import images_of, make_cluster, status_of
from lora_pipeline_tests.review.test_why_assigned import BY_VLM, image_with


@pytest.fixture
def live(studio: Studio) -> Iterator[str]:
    with background_server(studio.app) as url:
        yield url


def test_labelling_a_cluster_as_a_new_character_by_clicking(
    studio: Studio, live: str, browser, tmp_path: Path
) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    cluster_id = make_cluster(studio, crops=3)
    other = make_cluster(studio, crops=2, first=40)
    context = named_context(browser, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live}/clusters")
    card = page.locator(f"#cluster-{cluster_id}")
    expect(card).to_contain_text("3 crop(s)")
    sheet = card.locator(".contact-sheet img")
    expect(sheet).to_have_count(3)
    # The thumbnails really load (served from the data root), not broken images.
    assert all(sheet.nth(i).evaluate("img => img.complete && img.naturalWidth") for i in range(3))
    page.screenshot(path=tmp_path / "clusters.png", full_page=True)

    card.locator("summary", has_text="Label as a new character").click()
    card.locator("input[name=slug]").fill("midori")
    card.locator("input[name=name]").fill("Midori")
    card.locator("textarea[name=design_prompt]").fill("green coat")
    card.get_by_role("button", name="Label as new character").click()
    expect(page.locator(".notice")).to_contain_text(
        f"Cluster {cluster_id} labelled midori: 3 pending image(s) to review"
    )
    expect(page.locator(f"#cluster-{cluster_id}")).to_have_count(0)  # no longer open
    expect(page.locator(f"#cluster-{other}")).to_be_visible()
    page.screenshot(path=tmp_path / "clusters-labelled.png", full_page=True)
    assert status_of(studio, cluster_id) == "labelled"
    assert [i.status for i in images_of(studio, "midori")] == ["pending"] * 3

    # In the Approve tab, the viewer says why they are hers: a person labelled the cluster.
    page.goto(f"{live}/approve?character=midori")
    expect(page.locator("#queue .card")).to_have_count(3)
    page.keyboard.press("o")
    why = page.locator("#viewer-why")
    expect(why).to_be_visible()
    expect(why).to_contain_text(f"candidate cluster {cluster_id} was named this character")
    page.screenshot(path=tmp_path / "viewer-why.png")
    context.close()
    assert errors == []
    assert (tmp_path / "clusters-labelled.png").stat().st_size > 0


def test_the_viewer_shows_the_scores_and_the_vlm_answer(
    studio: Studio, live: str, browser, tmp_path: Path
) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    image_id = image_with(studio, {"identification": BY_VLM})
    context = named_context(browser, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live}/approve?character=kenji")
    page.keyboard.press("o")
    expect(page.locator("#viewer")).to_have_attribute("data-ready", str(image_id))
    why = page.locator("#viewer-why")
    expect(why).to_contain_text("By VLM (ollama:llava:13b), since reference matching was unsure")
    expect(why).to_contain_text("a match needs 0.950")
    expect(why.locator(".why-score")).to_have_text(["kenji 0.700 (below)", "aiko 0.412 (below)"])
    expect(why).to_contain_text("The VLM answered: Kenji")
    page.screenshot(path=tmp_path / "viewer-why-vlm.png")
    context.close()
    assert errors == []
