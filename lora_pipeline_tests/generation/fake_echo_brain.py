"""A fake Echo Brain on 127.0.0.1, over real HTTP: `GET /health`, `POST /api/echo/chat` and
`POST /api/echo/enhance` (lora_pipeline/generation/echo_brain.py gives the protocol).

It records every request and answers what the test sets: `answer` for enhance (a dict, or raw
bytes), `chat_answer` for chat, `status` for both, `healthy` for /health. Unknown paths are 404.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeEchoBrain:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.healthy = True
        self.answer: Any = {"suggestion": "", "rationale": ""}
        self.chat_answer: Any = {"response": "", "memories": []}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests.append({"path": self.path, "body": None})
                if self.path != "/health":
                    self._send(404, {"detail": "Not Found"})
                elif fake.healthy:
                    self._send(200, {"status": "healthy", "service": "echo-brain"})
                else:
                    self._send(503, {"status": "unhealthy", "detail": "vector store down"})

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers["content-length"])
                fake.requests.append(
                    {"path": self.path, "body": json.loads(self.rfile.read(length))}
                )
                answers = {"/api/echo/enhance": fake.answer, "/api/echo/chat": fake.chat_answer}
                if self.path not in answers:
                    self._send(404, {"detail": "Not Found"})
                    return
                self._send(fake.status, answers[self.path])

            def _send(self, status: int, answer: Any) -> None:
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
