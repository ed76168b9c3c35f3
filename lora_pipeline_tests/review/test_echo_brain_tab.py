"""The Echo Brain tab (seed 000 §7) against the fake Echo Brain on 127.0.0.1: chat with a
character's context, Enhance Prompt with suggestions and memories, a suggestion made the
character's design prompt, and "offline" / "not configured" shown with the URL it tried; over
HTTP, and by clicking in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import PromptSuggestion
from lora_pipeline.review.app import background_server
from lora_pipeline_tests.generation.fake_echo_brain import FakeEchoBrain
from lora_pipeline_tests.review.conftest import Studio, make_settings, open_studio


@pytest.fixture
def echo() -> Iterator[FakeEchoBrain]:
    server = FakeEchoBrain()
    server.chat_answer = {
        "response": "Aiko's teal reads best under a warm key light.",
        "memories": [{"text": "ep 3: aiko under neon", "source": "episode-3", "score": 0.82}],
    }
    server.answer = {
        "suggestion": "teal hair, yellow raincoat, solo, 1girl",
        "suggestions": ["teal hair, yellow raincoat, red boots"],
        "rationale": "rejections said not solo",
        "memories": ["kenji kept appearing beside her"],
    }
    yield server
    server.close()


@pytest.fixture
def studio(tmp_path: Path, echo: FakeEchoBrain) -> Iterator[Studio]:
    settings = make_settings(tmp_path / "home").model_copy(update={"echo_brain_url": echo.url})
    with open_studio(settings) as opened:
        yield opened


def design_prompt(studio: Studio, slug: str) -> str:
    with studio.registry.session() as session:
        return commands.get_character(session, slug).design_prompt


def test_chat_sends_the_character_context_and_shows_answer_and_memories(
    studio: Studio, echo: FakeEchoBrain
) -> None:
    page = studio.client.get("/echo-brain")
    assert page.status_code == 200 and "Echo Brain is <strong>online</strong>" in page.text
    answer = studio.client.post(
        "/echo-brain/chat",
        data={"csrf_token": studio.csrf(), "character": "aiko", "text": "how to light aiko?"},
    )
    assert answer.status_code == 200
    assert "warm key light" in answer.text and "ep 3: aiko under neon" in answer.text
    (sent,) = [r for r in echo.requests if r["path"] == "/api/echo/chat"]
    assert sent["body"]["query"] == "how to light aiko?"
    assert sent["body"]["context"] == {
        "character": "Aiko",
        "slug": "aiko",
        "design_prompt": "teal hair, yellow raincoat",
        "project": "The Show",
        "style_prompt": "anime style",
    }


def test_an_enhanced_prompt_becomes_the_design_prompt_through_a_suggestion(
    studio: Studio, echo: FakeEchoBrain
) -> None:
    token = studio.csrf()
    shown = studio.client.post(
        "/echo-brain/enhance",
        data={"csrf_token": token, "character": "aiko", "text": "teal hair, yellow raincoat"},
    )
    assert "teal hair, yellow raincoat, solo, 1girl" in shown.text
    assert "teal hair, yellow raincoat, red boots" in shown.text
    assert "kenji kept appearing beside her" in shown.text
    accepted = studio.client.post(
        "/echo-brain/accept",
        data={
            "csrf_token": token,
            "character": "aiko",
            "prompt": "teal hair, yellow raincoat, red boots",
            "rationale": "rejections said not solo",
        },
        follow_redirects=False,
    )
    assert accepted.status_code == 303
    assert design_prompt(studio, "aiko") == "teal hair, yellow raincoat, red boots"
    with studio.registry.session() as session:
        (row,) = session.scalars(select(PromptSuggestion))
        assert (row.advisor, row.status, row.rationale) == (
            "echo_brain",
            "accepted",
            "rejections said not solo",
        )


def test_every_form_needs_the_csrf_token(studio: Studio, echo: FakeEchoBrain) -> None:
    for path in ("/echo-brain/chat", "/echo-brain/enhance", "/echo-brain/accept"):
        refused = studio.client.post(path, data={"character": "aiko", "text": "x", "prompt": "x"})
        assert refused.status_code == 403, path
    assert echo.requests == [] and design_prompt(studio, "aiko") == "teal hair, yellow raincoat"


def test_offline_unhealthy_and_bad_input_are_one_line(studio: Studio, echo: FakeEchoBrain) -> None:
    token = studio.csrf()
    echo.status = 500
    failed = studio.client.post(
        "/echo-brain/enhance", data={"csrf_token": token, "character": "", "text": "teal"}
    )
    assert failed.status_code == 502 and "Echo Brain answered 500" in failed.text
    empty = studio.client.post("/echo-brain/chat", data={"csrf_token": token, "text": " "})
    assert empty.status_code == 502 and "the question is empty" in empty.text
    unknown = studio.client.post(
        "/echo-brain/accept", data={"csrf_token": token, "character": "nobody", "prompt": "x"}
    )
    assert unknown.status_code == 404
    echo.healthy = False
    assert "Echo Brain is <strong>offline</strong>" in studio.client.get("/echo-brain").text
    echo.close()
    page = studio.client.get("/echo-brain").text
    assert "offline" in page and f"<code>{echo.url}/health</code>" in page


def test_without_a_url_the_tab_says_it_is_not_configured(tmp_path: Path) -> None:
    with open_studio(make_settings(tmp_path / "home")) as studio:
        page = studio.client.get("/echo-brain").text
    assert "not configured" in page and "LORA_PIPELINE_ECHO_BRAIN_URL" in page


def test_chat_and_enhance_by_clicking(studio: Studio, tmp_path: Path, browser) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")

    with background_server(studio.app) as live:
        page = browser.new_page()
        page.goto(f"{live}/echo-brain")
        sync_api.expect(page.locator("#echo-status")).to_contain_text("online")
        page.select_option("#echo-character", "aiko")
        page.fill("#echo-text", "how to light aiko?")
        page.click("#echo-chat")
        sync_api.expect(page.locator("#echo-answer")).to_contain_text("warm key light")
        sync_api.expect(page.locator("#echo-memories")).to_contain_text("episode-3")
        page.fill("#echo-text", "teal hair, yellow raincoat")
        page.click("#echo-enhance")
        suggestion = page.locator(".suggestion", has_text="red boots")
        suggestion.get_by_role("button").click()
        sync_api.expect(page.locator(".notice")).to_contain_text("Design prompt of aiko updated")
        page.screenshot(path=str(tmp_path / "echo-brain.png"), full_page=True)
    assert design_prompt(studio, "aiko") == "teal hair, yellow raincoat, red boots"
