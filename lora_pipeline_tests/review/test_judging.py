"""Judging images (issue 15 item 2): the reviewer's name asked once and kept in a cookie, the
single-image view's data (full image, metadata, the rejection it answers, the character's
approved images), each decision's progress towards a training; over HTTP and with keys in
Chromium (screenshots in the test's tmp folder)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from starlette.testclient import TestClient

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Feedback, Image
from lora_pipeline.review.app import background_server
from lora_pipeline.review.views.approve import NO_REVIEWER, REVIEWER_COOKIE
from lora_pipeline_tests.review import test_batch_approve
from lora_pipeline_tests.review.conftest import BASE_URL, OWN_ORIGIN, Studio, form_token

JSON = {"accept": "application/json"}
registry = test_batch_approve.registry  # the fixture: a home the CLI finds, with the cast
PARAMS = {"seed": 4242, "steps": 20, "cfg": 6.5, "sampler": "euler", "negative_prompt": "blurry"}


def nameless(studio: Studio) -> TestClient:
    """A browser whose reviewer has not given a name yet."""
    return TestClient(studio.app, base_url=BASE_URL, headers=OWN_ORIGIN)


def decide(client: TestClient, image_id: int, action: str = "approve", **data: object):
    fields = {"csrf_token": form_token(client), **data}
    return client.post(f"/images/{image_id}/{action}", data=fields, headers=JSON)


def image_row(studio: Studio, image_id: int) -> Image:
    with studio.registry.session() as session:
        image = session.get(Image, image_id)
        session.expunge(image)
        return image


def test_a_decision_without_a_reviewer_name_is_refused(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    client = nameless(studio)
    for action, data in (("approve", {}), ("reject", {"category": "bad_quality"})):
        answer = decide(client, image_id, action, **data)
        assert answer.status_code == 400 and answer.json()["error"] == NO_REVIEWER
    # A plain form post gets the page back with the same line.
    page = client.post(f"/images/{image_id}/approve", data={"csrf_token": form_token(client)})
    assert page.status_code == 400 and NO_REVIEWER in page.text
    assert image_row(studio, image_id).status == "pending"
    with studio.registry.session() as session:
        assert session.scalars(select(Feedback)).all() == []
    assert 'id="reviewer-box" class="reviewer-box reviewer-missing"' in client.get("/approve").text


def test_the_name_is_given_once_and_remembered(studio: Studio) -> None:
    first, second = studio.add_image("aiko", 1), studio.add_image("aiko", 2)
    client = nameless(studio)
    token = form_token(client)
    given = client.post(
        "/reviewer",
        data={"csrf_token": token, "reviewer": "  Mika Ōta ", "next": "/approve?character=aiko"},
        follow_redirects=False,
    )
    assert given.status_code == 303 and given.headers["location"] == "/approve?character=aiko"
    flags = given.headers["set-cookie"].lower()
    assert "httponly" in flags and "samesite=strict" in flags and "max-age=31536000" in flags
    assert (
        'Reviewing as <strong id="reviewer-name">Mika Ōta</strong>' in client.get("/approve").text
    )
    assert decide(client, first).json()["status"] == "approved"
    assert decide(client, second, "reject", category="not_solo").status_code == 200
    assert image_row(studio, first).reviewed_by == "Mika Ōta"
    with studio.registry.session() as session:
        assert session.scalar(select(Feedback.reviewer)) == "Mika Ōta"
    # A name in the form (a script, `?reviewer=`) is recorded instead of the remembered one.
    third = studio.add_image("aiko", 3)
    assert decide(client, third, reviewer="bob").status_code == 200
    assert image_row(studio, third).reviewed_by == "bob"


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "reviewer name must not be empty"), ("   ", "must not be empty"), ("x" * 201, "long")],
)
def test_a_bad_reviewer_name_is_one_line(studio: Studio, name: str, message: str) -> None:
    client = nameless(studio)
    answer = client.post(
        "/reviewer", data={"csrf_token": form_token(client), "reviewer": name}, headers=JSON
    )
    assert answer.status_code == 400 and message in answer.json()["error"]
    assert "\n" not in answer.json()["error"] and REVIEWER_COOKIE not in answer.cookies


def test_a_cookie_no_form_wrote_is_no_name(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    client = studio.new_client(cookies={REVIEWER_COOKIE: "%20%20"})
    assert decide(client, image_id).json()["error"] == NO_REVIEWER


def test_a_decision_answers_with_the_characters_progress(studio: Studio) -> None:
    ids = [studio.add_image("aiko", n) for n in range(3)]
    studio.add_image("aiko", 9, status="approved")
    answer = decide(studio.client, ids[0]).json()
    assert (answer["character"], answer["approved"], answer["needed"]) == ("aiko", 2, 10)
    rejected = decide(studio.client, ids[1], "reject", category="bad_quality").json()
    assert (rejected["status"], rejected["approved"]) == ("rejected", 2)
    page = studio.client.get("/approve").text
    assert re.search(
        r'data-progress-for="aiko"><progress max="10" value="2"></progress> '
        r'<span class="approved-count">2</span> / 10 approved',
        page,
    )


def regenerated_image(studio: Studio) -> dict[str, int]:
    """aiko: two approved images, one rejected, and the pending image that answers it."""
    approved = [studio.add_image("aiko", n, status="approved") for n in (1, 2)]
    studio.add_image("kenji", 3, status="approved")
    rejected = studio.add_image("aiko", 4)
    with studio.registry.session() as session:
        feedback = commands.reject_image(
            session,
            rejected,
            ["wrong_style", "not_solo"],
            notes="two people in frame",
            reviewer="bob",
            negative_terms=["multiple people"],
        )
        feedback_id = feedback.id
    answer = studio.add_image("aiko", 5, params=PARAMS)
    with studio.registry.session() as session:
        session.get(Image, answer).provenance = {"answers_feedback": [feedback_id]}
    return {"approved": approved[-1], "rejected": rejected, "answer": answer, "fb": feedback_id}


def test_the_single_image_view_data(studio: Studio) -> None:
    ids = regenerated_image(studio)
    details = studio.client.get(f"/images/{ids['answer']}/details.json").json()
    assert details["url"] == f"/images/{ids['answer']}"
    assert (details["width"], details["height"], details["character"]) == (32, 24, "aiko")
    assert details["metadata"]["seed"] == 4242 and details["metadata"]["cfg"] == 6.5
    assert details["metadata"]["checkpoint"] == "anime-v3.safetensors"
    assert details["metadata"]["answers rejection"] == str(ids["fb"])
    (answer,) = details["answers"]
    assert answer["image_id"] == ids["rejected"] and answer["reviewer"] == "bob"
    assert answer["categories"] == ["Wrong style", "Not solo"]
    assert answer["notes"] == "two people in frame"
    # aiko's approved images, newest first; not kenji's.
    assert [a["image_id"] for a in details["approved"]] == [ids["approved"], ids["approved"] - 1]
    assert (details["approved_count"], details["needed"]) == (2, 10)
    assert studio.client.get(f"/images/{ids['approved']}/details.json").json()["answers"] == []


@pytest.mark.parametrize("image_id", ["999", "0", str(2**63)])
def test_the_details_of_no_image_are_404(studio: Studio, image_id: str) -> None:
    answer = studio.client.get(f"/images/{image_id}/details.json", headers=JSON)
    assert answer.status_code == 404 and "image" in answer.json()["error"]


# --- in Chromium, with keys --------------------------------------------------------------------


@pytest.fixture
def live(studio: Studio) -> Iterator[str]:
    with background_server(studio.app) as url:
        yield url


def big_image(studio: Studio, character: str, answers: int) -> int:
    """A 1600×1200 pending image of `character` answering rejection `answers`."""
    stored = studio.root.put_image(PILImage.new("RGB", (1600, 1200), (200, 40, 90)))
    with studio.registry.session() as session:
        image, _ = commands.add_image(
            session,
            commands.get_character(session, character).id,
            stored.sha256,
            stored.relpath,
            stored.width,
            stored.height,
            "generated",
            provenance={"answers_feedback": [answers]},
            generation_params=PARAMS,
        )
        return image.id


def test_judging_with_keys_in_the_single_image_view(
    studio: Studio, live: str, browser, tmp_path: Path
) -> None:
    ids = regenerated_image(studio)
    big = big_image(studio, "aiko", ids["fb"])
    after = [studio.add_image("aiko", 7), studio.add_image("kenji", 8)]
    queue = [ids["answer"], big, *after]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live}/approve")
    expect = pytest.importorskip("playwright.sync_api").expect
    # No name yet: the field has the focus, and a key press is typed into it, not a decision.
    name = page.locator("#reviewer-form input[name=reviewer]")
    expect(name).to_be_focused()
    page.keyboard.press("a")
    expect(name).to_have_value("a")
    name.fill("")
    page.locator(f'.card[data-image-id="{big}"] h2').click()
    page.keyboard.press("a")
    expect(name).to_be_focused()
    expect(page.locator("#reviewer-box")).to_have_class(re.compile("reviewer-asked"))
    assert image_row(studio, big).status == "pending"
    name.fill("Mika")
    name.press("Enter")
    expect(page.locator("#reviewer-name")).to_have_text("Mika")
    page.reload()
    expect(page.locator("#reviewer-name")).to_have_text("Mika")  # remembered by the cookie
    assert {c["name"]: c["value"] for c in context.cookies(live)}[REVIEWER_COOKIE] == "Mika"

    viewer = page.locator("#viewer")
    page.keyboard.press("j")  # the big image is the second in the queue
    page.keyboard.press("o")
    expect(viewer).to_be_visible()
    expect(viewer).to_have_attribute("data-ready", str(big))
    full = page.locator("#viewer-image")
    assert full.evaluate("img => img.naturalWidth") == 1600
    assert full.evaluate("img => img.clientWidth") < 1600  # fitted to the screen
    expect(page.locator("#viewer-approved img")).to_have_count(2)
    expect(page.locator("#viewer-answers")).to_contain_text("Wrong style, Not solo")
    expect(page.locator("#viewer-answers")).to_contain_text("two people in frame")
    expect(page.locator("#viewer-meta")).to_contain_text("4242")
    page.screenshot(path=tmp_path / "single-image-view.png")
    page.keyboard.press("z")
    expect(viewer).to_have_attribute("data-zoom", "1")
    assert full.evaluate("img => img.clientWidth") == 1600
    page.keyboard.press("+")
    expect(viewer).to_have_attribute("data-zoom", "1.25")
    assert full.evaluate("img => img.clientWidth") == 2000
    page.screenshot(path=tmp_path / "single-image-view-zoomed.png")
    page.keyboard.press("z")
    expect(viewer).to_have_attribute("data-zoom", "fit")

    # Approve from the view: the card leaves the queue, the view shows the next image.
    page.keyboard.press("a")
    expect(viewer).to_have_attribute("data-ready", str(after[0]))
    decided = page.locator(f'#decided .card[data-image-id="{big}"]')
    expect(decided).to_have_class(re.compile("decided-approved"))
    expect(decided).not_to_have_class(re.compile("current"))
    expect(page.locator("#queue .card")).to_have_count(3)
    progress = page.locator('[data-progress-for="aiko"] .approved-count')
    expect(progress).to_have_text("3")
    # The image just approved is among the comparisons of the next one.
    expect(page.locator("#viewer-approved img")).to_have_count(3)
    page.keyboard.press("j")
    expect(viewer).to_have_attribute("data-ready", str(after[1]))
    page.keyboard.press("k")
    expect(viewer).to_have_attribute("data-ready", str(after[0]))
    # Reject with categories 1 and 3, from the view.
    page.keyboard.press("r")
    page.keyboard.press("1")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    expect(viewer).to_have_attribute("data-ready", str(after[1]))
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(page.locator("#queue .card.current")).to_have_attribute("data-image-id", str(after[1]))
    expect(page.locator("#decided .card.current")).to_have_count(0)
    page.screenshot(path=tmp_path / "queue-after-decisions.png", full_page=True)
    context.close()
    assert errors == []
    assert [image_row(studio, i).status for i in queue] == [
        "pending",
        "approved",
        "rejected",
        "pending",
    ]
    assert image_row(studio, big).reviewed_by == "Mika"
    with studio.registry.session() as session:
        rejection = session.scalar(select(Feedback).where(Feedback.image_id == after[0]))
        assert (rejection.categories, rejection.reviewer) == (
            ["wrong_appearance", "bad_quality"],
            "Mika",
        )
    assert (tmp_path / "single-image-view.png").stat().st_size > 0


# --- the CLI: the login name unless --reviewer says otherwise ----------------------------------


def test_the_cli_records_the_login_name(monkeypatch: pytest.MonkeyPatch, registry) -> None:
    from lora_pipeline.cli import main

    monkeypatch.setattr("getpass.getuser", lambda: "mika")
    first, second, third = test_batch_approve.add_images(registry, 3)
    assert main(["review", "approve", str(first)]) == 0
    assert main(["review", "reject", str(second), "--category", "not-solo"]) == 0
    assert main(["review", "approve", str(third), "--reviewer", "bob"]) == 0
    with registry.session() as session:
        assert session.get(Image, first).reviewed_by == "mika"
        assert session.scalar(select(Feedback.reviewer)) == "mika"
        assert session.get(Image, third).reviewed_by == "bob"
