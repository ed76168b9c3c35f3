"""Echo Brain, the studio's memory service, over HTTP: its health, a chat about the production,
and prompt enhancement with the memories it found.

The protocol the project speaks (Echo Brain on port 8309 in the studio):
- `GET /health` → 200 while it serves;
- `POST /api/echo/chat` `{"query", "context"}` → `{"response", "memories"}`;
- `POST /api/echo/enhance` `{"prompt", "context"}` → `{"suggestion", "rationale",
  "suggestions"?, "memories"?}` (the prompt advisor reads the first two);
- a memory is `{"text", "source"?, "score"?}`.
Every failure is one `EchoBrainError` line saying what went wrong and at which URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from lora_pipeline.errors import PipelineError

HEALTH_PATH = "/health"
CHAT_PATH = "/api/echo/chat"
ENHANCE_PATH = "/api/echo/enhance"
DEFAULT_TIMEOUT_S = 15.0
# Longest question or prompt sent, and most memories shown: what a page can carry.
MAX_TEXT = 4000
MAX_MEMORIES = 20


class EchoBrainError(PipelineError):
    """Echo Brain is offline or answered something that is not its protocol."""


@dataclass(frozen=True)
class Memory:
    """A piece of project history Echo Brain found relevant."""

    text: str
    source: str = ""
    score: float | None = None


@dataclass(frozen=True)
class ChatAnswer:
    text: str
    memories: list[Memory] = field(default_factory=list)


@dataclass(frozen=True)
class Enhancement:
    """Suggested design prompts (best first), why, and the memories behind them."""

    suggestions: list[str]
    rationale: str = ""
    memories: list[Memory] = field(default_factory=list)


class EchoBrainClient:
    """One Echo Brain service at `url` (http or https)."""

    def __init__(
        self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, client: httpx.Client | None = None
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise EchoBrainError(f"Echo Brain URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._timeout = timeout_s
        self._client = client

    @property
    def health_url(self) -> str:
        return self.url + HEALTH_PATH

    def check_health(self) -> None:
        """Nothing when Echo Brain serves; EchoBrainError saying why it is offline otherwise."""
        self._request("GET", HEALTH_PATH)

    def chat(self, question: str, context: dict[str, Any]) -> ChatAnswer:
        answer = self._post(
            CHAT_PATH, {"query": _checked(question, "question"), "context": context}
        )
        text = answer.get("response")
        if not isinstance(text, str):
            raise EchoBrainError("Echo Brain's chat answer has no 'response' text")
        return ChatAnswer(text.strip(), _memories(answer))

    def enhance(self, prompt: str, context: dict[str, Any]) -> Enhancement:
        answer = self._post(
            ENHANCE_PATH, {"prompt": _checked(prompt, "prompt"), "context": context}
        )
        first = answer.get("suggestion")
        more = answer.get("suggestions", [])
        if first is not None and not isinstance(first, str):
            raise EchoBrainError("Echo Brain's 'suggestion' must be text")
        if not isinstance(more, list) or not all(isinstance(s, str) for s in more):
            raise EchoBrainError("Echo Brain's 'suggestions' must be a list of texts")
        unique = dict.fromkeys(s.strip() for s in [first or "", *more] if s and s.strip())
        rationale = answer.get("rationale", "")
        return Enhancement(
            list(unique), rationale if isinstance(rationale, str) else "", _memories(answer)
        )

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._request("POST", path, json=body)
        try:
            answer = response.json()
        except ValueError:
            raise EchoBrainError("Echo Brain answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise EchoBrainError("Echo Brain answered JSON that is not an object")
        return answer

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            if self._client is not None:
                response = self._client.request(
                    method, self.url + path, timeout=self._timeout, **kwargs
                )
            else:
                response = httpx.request(method, self.url + path, timeout=self._timeout, **kwargs)
        except httpx.HTTPError as error:
            raise EchoBrainError(f"Echo Brain at {self.url} is offline: {error}") from None
        if response.status_code != 200:
            detail = " ".join(response.text[:200].split())
            raise EchoBrainError(f"Echo Brain answered {response.status_code}: {detail}")
        return response


def _checked(text: str, what: str) -> str:
    text = (text or "").strip()
    if not text:
        raise EchoBrainError(f"the {what} is empty")
    if len(text) > MAX_TEXT:
        raise EchoBrainError(f"the {what} is longer than {MAX_TEXT} characters")
    return text


def _memories(answer: dict[str, Any]) -> list[Memory]:
    found = answer.get("memories", [])
    if not isinstance(found, list):
        return []
    memories = []
    for item in found[:MAX_MEMORIES]:
        if isinstance(item, str):
            memories.append(Memory(item))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            score = item.get("score")
            source = item.get("source")
            memories.append(
                Memory(
                    item["text"],
                    source if isinstance(source, str) else "",
                    float(score) if isinstance(score, int | float) else None,
                )
            )
    return memories
