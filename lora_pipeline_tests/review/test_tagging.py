"""Tags and asset types from the Approve and Gallery tabs (issue 15 item 5, seed 003): one or
many images at once, stored by the command `image tag` uses, then seen by a tag-filtered
dataset selection; over HTTP and by clicking and keys in Chromium (screenshots in the test's
tmp folder)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage

from lora_pipeline.dataset.selection import DatasetSelection
from lora_pipeline.dataset.service import build_approved_dataset
from lora_pipeline.dataset.versions import MANIFEST_FILENAME
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Image
from lora_pipeline.review.app import background_server
from lora_pipeline_tests.review.conftest import Studio, named_context

JSON = {"accept": "application/json"}
PLAIN = {"accept": "text/html"}  # a form posted without the page's script


def tags(studio: Studio, image_id: int) -> list[str]:
    with studio.registry.session() as session:
        return commands.stored_tags(session.get(Image, image_id))


def tag(studio: Studio, image_ids: list[object], headers: dict | None = None, **fields: str):
    data = {"csrf_token": studio.csrf(), "image_id": [str(i) for i in image_ids], **fields}
    return studio.client.post(
        "/images/tag", data=data, headers=headers or JSON, follow_redirects=False
    )


def test_tags_and_an_asset_type_on_many_images(studio: Studio) -> None:
    first, second = studio.add_image("aiko", 1), studio.add_image("kenji", 2)
    answer = tag(studio, [first, second], add="style:chibi, Solo", asset_type="character")
    assert answer.status_code == 200
    expected = ["style:chibi", "Solo", "asset_type:character"]
    assert answer.json() == {"ok": True, "tags": {str(first): expected, str(second): expected}}
    again = tag(studio, [second], remove="solo", asset_type="ui_icon")
    assert again.json()["tags"] == {str(second): ["style:chibi", "asset_type:ui_icon"]}
    assert tags(studio, first) == expected
    # The pages show them.
    approve_page = studio.client.get("/approve").text
    assert f'data-tags-for="{second}"><span class="tag">style:chibi</span>' in approve_page
    assert '<span class="tag">asset_type:ui_icon</span>' in studio.client.get("/gallery").text
    assert 'id="tag-form"' in studio.client.get(f"/gallery/{first}").text


def test_a_plain_form_post_goes_back_with_a_notice(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    answer = tag(
        studio, [image_id], headers=PLAIN, add="pose:standing", next="/approve?character=aiko"
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/approve?character=aiko&tagged=1"
    assert "Tags saved on 1 image(s)." in studio.client.get(answer.headers["location"]).text
    elsewhere = tag(studio, [image_id], headers=PLAIN, add="x", next="//evil.example/")
    assert elsewhere.headers["location"] == "/gallery?tagged=1"
    assert tags(studio, image_id) == ["pose:standing", "x"]


@pytest.mark.parametrize(
    ("ids", "fields", "status", "message"),
    [
        ([], {"add": "x"}, 400, "choose at least one image"),
        (["{id}"], {}, 400, "say what to change"),
        (["{id}"], {"add": " , "}, 400, "say what to change"),
        (["{id}", "999"], {"add": "x"}, 404, "image 999"),
        (["abc"], {"add": "x"}, 400, "image id must be a whole number"),
        ([str(2**63)], {"add": "x"}, 400, "image id"),
        (["{id}"], {"add": "a\tb"}, 400, "may not hold commas, tabs or line breaks"),
        (["{id}"], {"add": "x" * 65}, 400, "too long"),
        (["{id}"], {"asset_type": "y" * 60}, 400, "too long"),
    ],
)
def test_bad_tagging_is_one_line_and_changes_nothing(
    studio: Studio, ids: list[str], fields: dict[str, str], status: int, message: str
) -> None:
    image_id = studio.add_image("aiko", 1)
    answer = tag(studio, [i.format(id=image_id) for i in ids], **fields)
    assert answer.status_code == status and message in answer.json()["error"]
    assert "\n" not in answer.json()["error"]
    assert tags(studio, image_id) == []


def test_too_many_images_at_once_is_refused(studio: Studio) -> None:
    answer = tag(studio, list(range(1, 502)), add="x")
    assert answer.status_code == 400 and "at most 500 images" in answer.json()["error"]


# --- in Chromium ---------------------------------------------------------------------------------


@pytest.fixture
def live(studio: Studio) -> Iterator[str]:
    with background_server(studio.app) as url:
        yield url


def test_tagging_in_the_gallery_and_the_approve_tab_then_a_tag_filtered_dataset(
    studio: Studio, live: str, browser, tmp_path: Path
) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    approved = [studio.add_image("aiko", n, status="approved") for n in range(3)]
    pending = studio.add_image("aiko", 10)
    context = named_context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # Gallery: two of the approved images, by their checkboxes.
    page.goto(f"{live}/gallery")
    for image_id in approved[:2]:
        page.get_by_label(f"select image {image_id} for tagging").check()
    expect(page.locator("#tag-selected")).to_have_text("2 selected image(s)")
    form = page.locator("#tag-form")
    form.get_by_label("Add tags").fill("style:chibi")
    form.get_by_label("Asset type").fill("character")
    form.get_by_role("button", name="Save tags").click()
    expect(form).to_have_attribute("data-saved", "2")
    for image_id in approved[:2]:
        expect(page.locator(f'[data-tags-for="{image_id}"]')).to_have_text(
            "style:chibiasset_type:character"
        )
    expect(page.locator("input.pick:checked")).to_have_count(0)
    page.screenshot(path=tmp_path / "gallery-tagged.png", full_page=True)

    # Approve tab: one pending image, with keys (x selects the current card, t tags).
    page.goto(f"{live}/approve")
    page.keyboard.press("x")
    expect(page.locator("#tag-selected")).to_have_text("1 selected image(s)")
    page.keyboard.press("t")
    expect(form.get_by_label("Add tags")).to_be_focused()
    page.keyboard.type("style:chibi")
    form.get_by_label("Asset type").fill("character")
    form.get_by_label("Asset type").press("Enter")
    expect(form).to_have_attribute("data-saved", "1")
    expect(page.locator(f'[data-tags-for="{pending}"]')).to_have_text(
        "style:chibiasset_type:character"
    )
    page.screenshot(path=tmp_path / "approve-tagged.png", full_page=True)
    # Then approve it (the key works again once the tag field is left).
    page.locator(f'.card[data-image-id="{pending}"] h2').click()
    page.keyboard.press("a")
    expect(page.locator(f'#decided .card[data-image-id="{pending}"]')).to_be_visible()
    context.close()
    assert errors == []

    assert tags(studio, pending) == ["style:chibi", "asset_type:character"]
    chosen = build_approved_dataset(
        studio.registry, studio.root, "aiko", DatasetSelection(("asset_type:character",))
    )
    assert chosen.image_count == 3
    manifest = json.loads((studio.root.path(chosen.relpath) / MANIFEST_FILENAME).read_text())
    assert [entry["image_id"] for entry in manifest["images"]] == [*approved[:2], pending]
    assert all(
        "asset_type:character" in entry["provenance"]["tags"] for entry in manifest["images"]
    )
    both = DatasetSelection(("style:chibi", "origin:generated"), "all")
    assert build_approved_dataset(studio.registry, studio.root, "aiko", both).image_count == 3
    assert (tmp_path / "gallery-tagged.png").stat().st_size > 0


def test_one_image_from_its_gallery_page(studio: Studio, live: str, browser) -> None:
    expect = pytest.importorskip("playwright.sync_api").expect
    stored = studio.root.put_image(PILImage.new("RGB", (40, 30), (1, 2, 3)))
    with studio.registry.session() as session:
        image, _ = commands.add_image(
            session,
            commands.get_character(session, "mio").id,
            stored.sha256,
            stored.relpath,
            40,
            30,
            "generated",
        )
        image_id = image.id
    context = named_context(browser)
    page = context.new_page()
    page.goto(f"{live}/gallery/{image_id}")
    expect(page.locator("#tag-selected")).to_have_text("this image")
    page.locator("#tag-form").get_by_label("Asset type").fill("ui_icon")
    page.locator("#tag-form").get_by_role("button", name="Save tags").click()
    expect(page.locator(f'[data-tags-for="{image_id}"]')).to_have_text("asset_type:ui_icon")
    context.close()
    assert tags(studio, image_id) == ["asset_type:ui_icon"]
