"""The Echo Brain client against the fake service (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lora_pipeline.generation.echo_brain import EchoBrainClient, EchoBrainError, Memory
from lora_pipeline_tests.generation.fake_echo_brain import FakeEchoBrain


@pytest.fixture
def echo() -> Iterator[FakeEchoBrain]:
    server = FakeEchoBrain()
    yield server
    server.close()


def test_health_online_unhealthy_and_offline(echo: FakeEchoBrain) -> None:
    client = EchoBrainClient(echo.url)
    client.check_health()
    assert client.health_url == f"{echo.url}/health"
    echo.healthy = False
    with pytest.raises(EchoBrainError, match="answered 503"):
        client.check_health()
    echo.close()
    with pytest.raises(EchoBrainError, match=f"Echo Brain at {echo.url} is offline"):
        EchoBrainClient(echo.url, timeout_s=2).check_health()


def test_chat_sends_the_question_and_context_and_reads_the_memories(echo: FakeEchoBrain) -> None:
    echo.chat_answer = {
        "response": " Teal hair reads best with a warm key light. ",
        "memories": [
            {"text": "ep 3: aiko under neon", "source": "episode-3", "score": 0.82},
            "a bare memory",
            {"no": "text"},
        ],
    }
    answer = EchoBrainClient(echo.url).chat("how should aiko be lit?", {"character": "Aiko"})
    assert answer.text == "Teal hair reads best with a warm key light."
    assert answer.memories == [
        Memory("ep 3: aiko under neon", "episode-3", 0.82),
        Memory("a bare memory"),
    ]
    assert echo.requests[-1] == {
        "path": "/api/echo/chat",
        "body": {"query": "how should aiko be lit?", "context": {"character": "Aiko"}},
    }


def test_enhance_gives_unique_suggestions_best_first(echo: FakeEchoBrain) -> None:
    echo.answer = {
        "suggestion": "teal hair, solo",
        "suggestions": ["teal hair, solo", "teal hair, yellow raincoat, solo"],
        "rationale": "two rejections said not solo",
        "memories": [{"text": "kenji kept appearing", "score": 1}],
    }
    found = EchoBrainClient(echo.url).enhance("teal hair", {})
    assert found.suggestions == ["teal hair, solo", "teal hair, yellow raincoat, solo"]
    assert found.rationale == "two rejections said not solo"
    assert found.memories == [Memory("kenji kept appearing", "", 1.0)]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"<html>", "not JSON"),
        ([1, 2], "not an object"),
        ({"suggestion": 3}, "'suggestion' must be text"),
        ({"suggestion": "a", "suggestions": "b"}, "'suggestions' must be a list"),
    ],
)
def test_malformed_answers_are_one_line(echo: FakeEchoBrain, answer: object, message: str) -> None:
    echo.answer = answer
    with pytest.raises(EchoBrainError, match=message):
        EchoBrainClient(echo.url).enhance("teal hair", {})


def test_bad_input_is_refused_before_sending(echo: FakeEchoBrain) -> None:
    client = EchoBrainClient(echo.url)
    with pytest.raises(EchoBrainError, match="the question is empty"):
        client.chat("   ", {})
    with pytest.raises(EchoBrainError, match="longer than 4000"):
        client.enhance("x" * 4001, {})
    with pytest.raises(EchoBrainError, match="must start with http"):
        EchoBrainClient("file:///etc/passwd")
    assert echo.requests == []
    echo.chat_answer = {"memories": []}
    with pytest.raises(EchoBrainError, match="no 'response' text"):
        client.chat("hello", {})
