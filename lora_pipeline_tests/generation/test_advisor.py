"""Prompt advisors: the built-in rules, Echo Brain over HTTP (a fake server on 127.0.0.1), and
the suggestion made after three structured rejections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_pipeline.generation.advisor import (
    ECHO_BRAIN_URL_ENV,
    AdviceRequest,
    AdvisorError,
    BuiltinAdvisor,
    EchoBrainAdvisor,
    Rejection,
    configured_advisors,
    propose_refinement,
)
from lora_pipeline.registry import commands, suggestions
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.registry.models import PromptSuggestion
from lora_pipeline_tests.generation.fake_echo_brain import FakeEchoBrain


def request(*rejections: tuple[tuple[str, ...], str], prompt: str = "teal hair, yellow raincoat"):
    return AdviceRequest(
        character="Aiko",
        design_prompt=prompt,
        rejections=tuple(Rejection(c, n) for c, n in rejections),
        project="The Show",
        style_prompt="anime style, cel shading",
    )


# --- built-in advisor -----------------------------------------------------------------------------


def test_wrong_appearance_moves_appearance_terms_first_with_more_weight() -> None:
    advice = BuiltinAdvisor().advise(
        request((("wrong_appearance",), ""), prompt="smiling, teal hair, yellow raincoat")
    )
    assert advice.suggested_prompt == "(teal hair:1.2), (yellow raincoat:1.2), smiling"
    assert advice.advisor == "builtin"
    assert "wrong_appearance ×1" in advice.rationale
    # Already emphasised: one step more, capped at 1.5.
    again = BuiltinAdvisor().advise(
        request((("wrong_appearance",), ""), prompt="(teal hair:1.2), (red scarf:1.5)")
    )
    assert again.suggested_prompt == "(teal hair:1.3), (red scarf:1.5)"


def test_category_rules() -> None:
    advice = BuiltinAdvisor().advise(
        request(
            (("not_solo", "bad_quality"), ""),
            (("wrong_style",), ""),
            (("wrong_pose", "wrong_expression"), ""),
            prompt="short hair",
        )
    )
    parts = advice.suggested_prompt.split(", ")
    assert parts[0] == "solo"
    for term in ("anime style", "cel shading", "masterpiece", "best quality", "natural pose"):
        assert term in parts
    assert "expressive face" in parts
    assert "not_solo ×1" in advice.rationale and "added 'solo'" in advice.rationale


def test_generic_style_terms_when_the_project_has_none() -> None:
    bare = AdviceRequest("Aiko", "teal hair", (Rejection(("wrong_style",)),))
    assert BuiltinAdvisor().advise(bare).suggested_prompt == (
        "teal hair, consistent art style, on model"
    )


def test_notes_add_what_they_ask_for_and_repeated_phrases() -> None:
    advice = BuiltinAdvisor().advise(
        request(
            (("wrong_appearance",), "Hair should be teal. Should have a red scarf"),
            (("wrong_pose",), "freckles; too dark"),
            (("wrong_pose",), "freckles. needs a white collar"),
            prompt="yellow raincoat",
        )
    )
    parts = advice.suggested_prompt.split(", ")
    assert {"teal hair", "red scarf", "white collar", "freckles"} <= set(parts)
    assert not any("dark" in p for p in parts), "complaints are not added"
    assert "repeated in 2+ notes" in advice.rationale


def test_nothing_to_improve_gives_no_advice() -> None:
    assert BuiltinAdvisor().advise(request(((), "meh"))) is None
    done = request((("not_solo",), ""), prompt="solo, teal hair")
    assert BuiltinAdvisor().advise(done) is None


# --- Echo Brain -----------------------------------------------------------------------------------


@pytest.fixture
def echo() -> Iterator[FakeEchoBrain]:
    server = FakeEchoBrain()
    yield server
    server.close()


def test_echo_brain_gets_the_prompt_and_context(echo: FakeEchoBrain) -> None:
    echo.answer = {"suggestion": "teal hair, solo, 1girl", "rationale": "past rejections"}
    advice = EchoBrainAdvisor(echo.url + "/").advise(
        request((("not_solo",), "two girls"), (("not_solo", "wrong_style"), ""))
    )
    assert advice.suggested_prompt == "teal hair, solo, 1girl"
    assert (advice.rationale, advice.advisor) == ("past rejections", "echo_brain")
    (sent,) = echo.requests
    assert sent["path"] == "/api/echo/enhance"
    assert sent["body"]["prompt"] == "teal hair, yellow raincoat"
    context = sent["body"]["context"]
    assert context["character"] == "Aiko" and context["project"] == "The Show"
    assert context["category_counts"] == {"not_solo": 2, "wrong_style": 1}
    assert context["rejections"][0] == {"categories": ["not_solo"], "notes": "two girls"}


def test_echo_brain_without_a_new_prompt_gives_no_advice(echo: FakeEchoBrain) -> None:
    echo.answer = {"suggestion": "teal hair, yellow raincoat", "rationale": "fine as it is"}
    assert EchoBrainAdvisor(echo.url).advise(request((("not_solo",), ""))) is None


@pytest.mark.parametrize(
    ("status", "answer", "message"),
    [
        (500, {"detail": "vector store down"}, "Echo Brain answered 500"),
        (200, b"<html>", "not JSON"),
        (200, {"suggestion": ["a"]}, "'suggestion' must be text"),
    ],
)
def test_echo_brain_errors_are_readable(
    echo: FakeEchoBrain, status: int, answer: Any, message: str
) -> None:
    echo.status, echo.answer = status, answer
    with pytest.raises(AdvisorError, match=message):
        EchoBrainAdvisor(echo.url).advise(request((("not_solo",), "")))


def test_offline_echo_brain(echo: FakeEchoBrain) -> None:
    url = echo.url
    echo.close()
    with pytest.raises(AdvisorError, match="is offline"):
        EchoBrainAdvisor(url, timeout_s=2).advise(request((("not_solo",), "")))
    with pytest.raises(AdvisorError, match="must start with http"):
        EchoBrainAdvisor("echo:8309")


def test_configured_advisors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ECHO_BRAIN_URL_ENV, raising=False)
    assert [a.name for a in configured_advisors()] == ["builtin"]
    monkeypatch.setenv(ECHO_BRAIN_URL_ENV, "http://127.0.0.1:8309")
    assert [a.name for a in configured_advisors()] == ["echo_brain", "builtin"]


# --- suggestions from the registry --------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "The Show", style_prompt="anime style")
        commands.add_character(session, "show", "aiko", "Aiko", design_prompt="teal hair")
    yield registry
    registry.dispose()


def reject(registry: Registry, n: int, categories: list[str], notes: str = "") -> None:
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        image, _ = commands.add_image(
            session, aiko.id, f"{n:064x}", f"i/{n}.png", 8, 8, "generated"
        )
        commands.reject_image(session, image.id, categories, notes=notes)


def open_rows(registry: Registry) -> list[PromptSuggestion]:
    with registry.session() as session:
        return list(suggestions.open_suggestions(session).values())


def test_a_suggestion_after_three_structured_rejections(registry: Registry) -> None:
    logs: list[str] = []
    reject(registry, 1, ["not_solo"])
    reject(registry, 2, [], notes="just ugly")  # not structured: no category
    reject(registry, 3, ["wrong_style"])
    assert propose_refinement(registry, "aiko", [BuiltinAdvisor()], logs.append) is None
    reject(registry, 4, ["not_solo", "bad_quality"])
    suggestion_id = propose_refinement(registry, "aiko", [BuiltinAdvisor()], logs.append)
    (row,) = open_rows(registry)
    assert row.id == suggestion_id and row.advisor == "builtin"
    assert row.suggested_prompt.startswith("solo, teal hair, anime style")
    assert "3 rejections" in row.rationale
    # The same rejections are not answered twice; three new ones give a new suggestion.
    assert propose_refinement(registry, "aiko", [BuiltinAdvisor()], logs.append) is None
    for n in (5, 6, 7):
        reject(registry, n, ["wrong_appearance"])
    newer = propose_refinement(registry, "aiko", [BuiltinAdvisor()], logs.append)
    (row,) = open_rows(registry)
    assert row.id == newer != suggestion_id
    with registry.session() as session:
        assert session.get(PromptSuggestion, suggestion_id).status == "superseded"


def test_offline_echo_brain_falls_back_to_the_builtin_advisor(registry: Registry) -> None:
    for n in range(3):
        reject(registry, n, ["not_solo"])
    logs: list[str] = []
    advisors = [EchoBrainAdvisor("http://127.0.0.1:9", timeout_s=2), BuiltinAdvisor()]
    assert propose_refinement(registry, "aiko", advisors, logs.append) is not None
    assert any("echo_brain failed" in line and "offline" in line for line in logs)
    (row,) = open_rows(registry)
    assert row.advisor == "builtin"


def test_echo_brain_suggestion_is_recorded(registry: Registry, echo: FakeEchoBrain) -> None:
    echo.answer = {"suggestion": "solo, teal hair, 1girl", "rationale": "memory #42"}
    for n in range(3):
        reject(registry, n, ["not_solo"], notes="two people")
    propose_refinement(registry, "aiko", [EchoBrainAdvisor(echo.url)], lambda _: None)
    (row,) = open_rows(registry)
    assert (row.suggested_prompt, row.rationale, row.advisor) == (
        "solo, teal hair, 1girl",
        "memory #42",
        "echo_brain",
    )
    assert len(echo.requests[0]["body"]["context"]["rejections"]) == 3


def test_accept_and_dismiss_happen_once(registry: Registry) -> None:
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        first = suggestions.add_prompt_suggestion(session, aiko.id, "solo, teal hair", "", "x")
    with registry.session() as session:
        suggestions.accept_suggestion(session, first.id)
    with registry.session() as session:
        assert commands.get_character(session, "aiko").design_prompt == "solo, teal hair"
        with pytest.raises(ConflictError, match="already accepted"):
            suggestions.dismiss_suggestion(session, first.id)
        with pytest.raises(NotFoundError, match="unknown prompt suggestion 99"):
            suggestions.accept_suggestion(session, 99)
        with pytest.raises(InvalidInputError, match="must not be empty"):
            suggestions.add_prompt_suggestion(session, aiko.id, "  ", "", "x")
