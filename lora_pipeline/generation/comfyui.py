"""A ComfyUI client: queue a workflow, follow it on the websocket, fetch what it saved.

The protocol (ComfyUI v0.8; every shape is in the reference samples):
- `POST /prompt {prompt, client_id}` answers `{prompt_id, number, node_errors}`, or 400 with
  `{error: {type, message, details}, node_errors: {node: {class_type, errors: [...]}}}`.
- the socket `/ws?clientId=` carries, for prompts queued with that client id, `execution_start`,
  `execution_cached`, `executing {node}`, `progress {value, max}` per sampler step, `executed`,
  then `execution_success` (or `execution_error` / `execution_interrupted`) and last `executing`
  with `node: null`. Binary frames are previews and are skipped.
- `GET /history/{id}` is `{}` until the prompt is done, then holds its outputs and status.
- `GET /view?filename&subfolder&type` serves a saved file.

When the socket cannot be opened or drops, the client polls `/history` instead; either way a
deadline bounds the wait and ends in `ComfyUITimeoutError`, which the caller turns into a failed
job (and usually a `cancel`, so the GPU is not left working for nobody).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException
from websockets.sync.client import ClientConnection, connect

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_path

log = logging.getLogger(__name__)

Workflow = dict[str, dict[str, Any]]
CancelOutcome = Literal["interrupted", "removed", "not queued"]

DEFAULT_TIMEOUT_S = 600.0
DEFAULT_HTTP_TIMEOUT_S = 30.0
# Previews arrive as binary frames; large images make large frames.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_OUTPUT_BYTES = 1024 * 1024 * 1024
_PROMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DETAIL_LIMIT = 300
# Polls of /history between two looks at /queue, which carries every queued graph in full.
_POLLS_PER_QUEUE_CHECK = 5


class ComfyUIError(PipelineError):
    """Base class: `str(error)` is one readable line for the job's error column and the UI."""


class ComfyUIConnectionError(ComfyUIError):
    """ComfyUI cannot be reached, or answered something that is not its API."""


class ComfyUIValidationError(ComfyUIError):
    """POST /prompt was refused (HTTP 400): the workflow or one of its values is invalid."""

    def __init__(self, message: str, error: dict[str, Any], node_errors: dict[str, Any]) -> None:
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


class ComfyUIMissingNodesError(ComfyUIError):
    """The workflow uses node types the server does not have (checked before queueing)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


# Custom-node packs the shipped templates use, by the prefix of their node types, so that a
# server without them is told which pack to install rather than only which node is missing.
CUSTOM_NODE_PACKS = {
    "ADE_": "ComfyUI-AnimateDiff-Evolved (github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved)",
    "VHS_": "ComfyUI-VideoHelperSuite (github.com/Kosinkadink/ComfyUI-VideoHelperSuite)",
}


def describe_missing_nodes(base_url: str, missing: list[str]) -> str:
    """One line: which node types the server lacks and the packs that provide them."""
    packs = sorted(
        {
            pack
            for node in missing
            for prefix, pack in CUSTOM_NODE_PACKS.items()
            if node.startswith(prefix)
        }
    )
    hint = f"; install the custom nodes {' and '.join(packs)}" if packs else ""
    return f"ComfyUI at {base_url} does not have the node types {', '.join(missing)}{hint}"


class ComfyUIExecutionError(ComfyUIError):
    """A node raised while the prompt ran (an `execution_error`)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


class ComfyUIInterruptedError(ComfyUIError):
    """The prompt was interrupted before it finished (`execution_interrupted`)."""


class ComfyUITimeoutError(ComfyUIError, TimeoutError):
    """The prompt did not finish in time; it may still be queued or running in ComfyUI."""

    def __init__(self, message: str, prompt_id: str) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id


@dataclass(frozen=True)
class ComfyUIProgress:
    """One sampler step of one node (a `progress` frame)."""

    prompt_id: str
    node: str
    value: int
    maximum: int

    @property
    def fraction(self) -> float:
        return self.value / self.maximum if self.maximum else 0.0


ProgressCallback = Callable[[ComfyUIProgress], None]


@dataclass(frozen=True)
class OutputFile:
    """A file a node saved: fetch it with `ComfyUIClient.fetch`."""

    node_id: str
    kind: str  # the key in the node's outputs: "images", or "gifs" for Video Combine
    filename: str
    subfolder: str = ""
    type: str = "output"


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    outputs: tuple[OutputFile, ...]
    history: dict[str, Any] = field(repr=False)

    def first(self, kind: str = "images") -> OutputFile:
        """The first saved (type "output") file of a kind, else the first file of that kind."""
        files = [f for f in self.outputs if f.kind == kind]
        if not files:
            raise ComfyUIError(f"ComfyUI prompt {self.prompt_id} produced no {kind}")
        saved = [f for f in files if f.type == "output"]
        return (saved or files)[0]

    def first_video(self) -> OutputFile:
        """The clip: VideoHelperSuite's Video Combine reports it as "gifs", stock SaveVideo as
        "images" (with "animated": [true])."""
        return self.first("gifs" if any(f.kind == "gifs" for f in self.outputs) else "images")


@dataclass(frozen=True)
class _Deadline:
    limit_s: float
    at: float

    @classmethod
    def after(cls, seconds: float) -> _Deadline:
        return cls(seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


@dataclass(frozen=True)
class QueueState:
    running: tuple[str, ...]
    pending: tuple[str, ...]

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


def _one_line(text: object, limit: int = _DETAIL_LIMIT) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _node_error_lines(node_errors: dict[str, Any]) -> list[str]:
    lines = []
    for node_id, info in node_errors.items():
        info = info if isinstance(info, dict) else {}
        class_type = info.get("class_type", "?")
        for item in info.get("errors") or []:
            item = item if isinstance(item, dict) else {"message": str(item)}
            message = item.get("message") or item.get("type") or "invalid"
            details = item.get("details")
            text = f"{message}: {details}" if details else message
            lines.append(f"node {node_id} ({class_type}): {_one_line(text)}")
    return lines


def describe_prompt_error(body: object) -> str:
    """The one-line reason of a 400 answer to POST /prompt, naming the node and the problem."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the workflow: {_one_line(body)}"
    error = body.get("error")
    node_errors = body.get("node_errors")
    lines = _node_error_lines(node_errors) if isinstance(node_errors, dict) else []
    if not lines:
        if isinstance(error, dict):
            message = error.get("message") or error.get("type") or "invalid prompt"
            details = error.get("details")
            lines = [f"{message} ({details})" if details else str(message)]
        else:
            lines = [str(error or "invalid prompt")]
    return "ComfyUI rejected the workflow: " + _one_line("; ".join(lines), 2 * _DETAIL_LIMIT)


def _execution_error(prompt_id: str, data: dict[str, Any]) -> ComfyUIExecutionError:
    exception_message = str(data.get("exception_message") or "").strip()
    first_line = exception_message.splitlines()[0] if exception_message else "no message"
    message = (
        f"ComfyUI prompt {prompt_id} failed in node {data.get('node_id', '?')} "
        f"({data.get('node_type', '?')}): {data.get('exception_type', 'error')}: "
        f"{_one_line(first_line)}"
    )
    return ComfyUIExecutionError(message, data)


def _interrupted(prompt_id: str, data: dict[str, Any]) -> ComfyUIInterruptedError:
    where = ""
    if "node_id" in data:
        where = f" in node {data['node_id']} ({data.get('node_type', '?')})"
    return ComfyUIInterruptedError(f"ComfyUI prompt {prompt_id} was interrupted{where}")


def _output_files(outputs: object) -> tuple[OutputFile, ...]:
    files: list[OutputFile] = []
    if not isinstance(outputs, dict):
        return ()
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            continue
        for kind, items in node_output.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("filename"), str):
                    files.append(
                        OutputFile(
                            node_id=str(node_id),
                            kind=kind,
                            filename=item["filename"],
                            subfolder=str(item.get("subfolder") or ""),
                            type=str(item.get("type") or "output"),
                        )
                    )
    return tuple(files)


def result_from_history(prompt_id: str, entry: dict[str, Any]) -> PromptResult:
    """The outputs of a finished history entry, or the error that ended it."""
    status = entry.get("status") if isinstance(entry.get("status"), dict) else {}
    if status.get("status_str") == "error" or status.get("completed") is False:
        for message in status.get("messages") or []:
            if not (isinstance(message, list) and len(message) == 2):
                continue
            kind, data = message
            data = data if isinstance(data, dict) else {}
            if kind == "execution_error":
                raise _execution_error(prompt_id, data)
            if kind == "execution_interrupted":
                raise _interrupted(prompt_id, data)
        raise ComfyUIError(f"ComfyUI prompt {prompt_id} ended with status {status!r}")
    return PromptResult(prompt_id, _output_files(entry.get("outputs")), entry)


def _queue_ids(entries: object) -> tuple[str, ...]:
    # Each entry is [number, prompt_id, prompt, extra_data, outputs_to_execute].
    if not isinstance(entries, list):
        return ()
    return tuple(
        str(entry[1]) for entry in entries if isinstance(entry, list | tuple) and len(entry) > 1
    )


def _check_prompt_id(prompt_id: object) -> str:
    if not isinstance(prompt_id, str) or not _PROMPT_ID.fullmatch(prompt_id):
        raise ComfyUIError(f"invalid ComfyUI prompt id {prompt_id!r}")
    return prompt_id


def _base_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise ComfyUIConnectionError(f"invalid ComfyUI URL {url!r}: {error}") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ComfyUIConnectionError(
            f"invalid ComfyUI URL {url!r}: expected http(s)://host:port, e.g. http://127.0.0.1:8188"
        )
    if parsed.query or parsed.fragment:
        raise ComfyUIConnectionError(f"invalid ComfyUI URL {url!r}: no query or fragment allowed")
    return parsed.copy_with(path=parsed.path.rstrip("/") + "/")


class ComfyUIClient:
    """One ComfyUI server; thread-safe (each run opens its own socket under its own client id).

    `timeout` bounds a whole prompt (queueing, running, fetching the history);
    `http_timeout` bounds each HTTP request.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT_S,
        poll_interval: float = 1.0,
        check_interval: float = 10.0,
        client_id: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not min(timeout, http_timeout, poll_interval, check_interval) > 0:
            raise ValueError("timeouts and intervals must be positive")
        self._url = _base_url(base_url)
        self.base_url = str(self._url).rstrip("/")
        self.timeout = float(timeout)
        self.poll_interval = float(poll_interval)
        # While the socket is quiet, how often to look at /history in case a frame was missed.
        self.check_interval = float(check_interval)
        # ComfyUI sends a prompt's frames to the socket of the client id it was queued with.
        self.client_id = client_id or uuid.uuid4().hex
        self._http = httpx.Client(
            base_url=str(self._url), timeout=http_timeout, transport=transport
        )
        # The node types the server has, read once per client (a server that installs custom
        # nodes must restart, and the project's clients live for one run).
        self._node_types: frozenset[str] | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ComfyUIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ComfyUIClient({self.base_url!r})"

    def _send(
        self, method: str, path: str, *, accept_400: bool = False, **kwargs: Any
    ) -> httpx.Response:
        # `path` is a fixed endpoint, or one with a checked and quoted id; every other value
        # travels as query params or JSON, never inside the path.
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise ComfyUIConnectionError(
                f"ComfyUI at {self.base_url} did not answer {method} /{path} in time"
            ) from error
        except httpx.HTTPError as error:
            raise ComfyUIConnectionError(
                f"cannot reach ComfyUI at {self.base_url}: {_one_line(error) or type(error)}"
            ) from error
        if response.status_code >= 400 and not (accept_400 and response.status_code == 400):
            body = _one_line(response.text, 200) or response.reason_phrase
            raise ComfyUIError(
                f"ComfyUI answered {method} /{path} with HTTP {response.status_code}: {body}"
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise ComfyUIConnectionError(
                f"ComfyUI at {self.base_url} answered {method} /{path} with something that is "
                f"not JSON: {_one_line(response.text, 120)!r}"
            ) from error

    def _ws_url(self, client_id: str) -> str:
        scheme = "wss" if self._url.scheme == "https" else "ws"
        url = self._url.copy_with(
            scheme=scheme, path=self._url.path + "ws", params={"clientId": client_id}
        )
        return str(url)

    # --- queueing ---------------------------------------------------------------------------

    def queue_prompt(self, workflow: Workflow, client_id: str | None = None) -> str:
        """Queue an API-format workflow; its prompt id. ComfyUIValidationError on a 400.

        Its frames go to the socket of `client_id` (by default this client's id).
        """
        if not isinstance(workflow, dict) or not workflow:
            raise ComfyUIError("the workflow must be a non-empty API-format graph")
        response = self._send(
            "POST",
            "prompt",
            accept_400=True,
            json={"prompt": workflow, "client_id": client_id or self.client_id},
        )
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code == 400:
            error = body.get("error") if isinstance(body, dict) else None
            node_errors = body.get("node_errors") if isinstance(body, dict) else None
            raise ComfyUIValidationError(
                describe_prompt_error(body),
                error if isinstance(error, dict) else {"message": str(error or body)},
                node_errors if isinstance(node_errors, dict) else {},
            )
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not isinstance(prompt_id, str):
            raise ComfyUIConnectionError(
                f"ComfyUI accepted the workflow but sent no prompt id: {_one_line(body, 120)!r}"
            )
        return _check_prompt_id(prompt_id)

    def run(
        self,
        workflow: Workflow,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_queued: Callable[[str], None] | None = None,
    ) -> PromptResult:
        """Queue `workflow` and wait for it. The socket is opened first so no frame is missed.

        Each run has its own client id: ComfyUI keeps one socket per client id, so runs in
        parallel threads must not share one.
        """
        deadline = _Deadline.after(timeout or self.timeout)
        self.check_nodes(workflow)
        client_id = uuid.uuid4().hex
        with self._socket(client_id) as socket:
            prompt_id = self.queue_prompt(workflow, client_id)
            if on_queued is not None:
                on_queued(prompt_id)
            return self._wait_on(socket, prompt_id, deadline, on_progress)

    def wait(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PromptResult:
        """Wait for a prompt to finish. Per-step progress comes only for prompts queued with
        this client's id (`queue_prompt` without one); any other ends through the history."""
        _check_prompt_id(prompt_id)
        deadline = _Deadline.after(timeout or self.timeout)
        with self._socket(self.client_id) as socket:
            # Frames sent before the socket opened are gone; the history has the end of them.
            entry = self.history(prompt_id)
            if entry is not None:
                return result_from_history(prompt_id, entry)
            return self._wait_on(socket, prompt_id, deadline, on_progress)

    # --- following a prompt -----------------------------------------------------------------

    @contextmanager
    def _socket(self, client_id: str) -> Iterator[ClientConnection | None]:
        try:
            socket = connect(
                self._ws_url(client_id),
                open_timeout=min(10.0, self.timeout),
                max_size=MAX_FRAME_BYTES,
                user_agent_header="lora_pipeline",
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, WebSocketException) as error:
            log.warning("ComfyUI websocket unavailable (%s); polling /history instead", error)
            yield None
            return
        try:
            yield socket
        finally:
            socket.close()

    def _wait_on(
        self,
        socket: ClientConnection | None,
        prompt_id: str,
        deadline: _Deadline,
        on_progress: ProgressCallback | None,
    ) -> PromptResult:
        if socket is not None:
            try:
                return self._follow(socket, prompt_id, deadline, on_progress)
            except ComfyUIError:
                raise  # a timeout is a TimeoutError, hence an OSError: not a socket failure
            except (OSError, WebSocketException) as error:
                log.warning("ComfyUI websocket lost (%s); polling /history instead", error)
        return self._poll(prompt_id, deadline)

    @staticmethod
    def _timeout(prompt_id: str, deadline: _Deadline) -> ComfyUITimeoutError:
        return ComfyUITimeoutError(
            f"ComfyUI prompt {prompt_id} did not finish within {deadline.limit_s:g} s", prompt_id
        )

    def _follow(
        self,
        socket: ClientConnection,
        prompt_id: str,
        deadline: _Deadline,
        on_progress: ProgressCallback | None,
    ) -> PromptResult:
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise self._timeout(prompt_id, deadline)
            try:
                frame = socket.recv(timeout=min(remaining, self.check_interval))
            except TimeoutError:
                # Quiet socket: a frame may have been missed (another socket took our client
                # id, a proxy dropped it); the history tells.
                result = self._finished(prompt_id, check_queue=True)
                if result is not None:
                    return result
                continue
            event = _parse_frame(frame)
            if event is None or event[1].get("prompt_id") != prompt_id:
                continue
            kind, data = event
            if kind == "progress" and on_progress is not None:
                on_progress(_progress(prompt_id, data))
            elif kind == "execution_error":
                raise _execution_error(prompt_id, data)
            elif kind == "execution_interrupted":
                raise _interrupted(prompt_id, data)
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None):
                return self._await_history(prompt_id, deadline)

    def _await_history(self, prompt_id: str, deadline: _Deadline) -> PromptResult:
        # execution_success is sent a moment before ComfyUI writes the history entry.
        delay = 0.02
        while True:
            result = self._finished(prompt_id)
            if result is not None:
                return result
            if delay > deadline.remaining():
                raise self._timeout(prompt_id, deadline)
            time.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    def _poll(self, prompt_id: str, deadline: _Deadline) -> PromptResult:
        polls = 0
        while True:
            polls += 1
            result = self._finished(prompt_id, check_queue=polls % _POLLS_PER_QUEUE_CHECK == 0)
            if result is not None:
                return result
            remaining = deadline.remaining()
            if remaining <= 0:
                raise self._timeout(prompt_id, deadline)
            time.sleep(min(self.poll_interval, remaining))

    def _finished(self, prompt_id: str, check_queue: bool = False) -> PromptResult | None:
        entry = self.history(prompt_id)
        if entry is not None:
            return result_from_history(prompt_id, entry)
        if check_queue and prompt_id not in self.queue():
            # It may have finished between the two calls; look once more before giving up.
            entry = self.history(prompt_id)
            if entry is not None:
                return result_from_history(prompt_id, entry)
            raise ComfyUIError(
                f"ComfyUI prompt {prompt_id} is neither queued nor in the history: it was "
                "deleted from the queue or ComfyUI restarted"
            )
        return None

    # --- reading state ----------------------------------------------------------------------

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt, or None while it is queued or running."""
        path = f"history/{quote(_check_prompt_id(prompt_id), safe='')}"
        body = self._json("GET", path)
        if not isinstance(body, dict):
            raise ComfyUIConnectionError(f"ComfyUI sent a malformed history for {prompt_id}")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def queue(self) -> QueueState:
        body = self._json("GET", "queue")
        if not isinstance(body, dict):
            raise ComfyUIConnectionError("ComfyUI sent a malformed queue")
        running, pending = body.get("queue_running"), body.get("queue_pending")
        return QueueState(_queue_ids(running), _queue_ids(pending))

    def fetch(self, output: OutputFile, max_bytes: int = MAX_OUTPUT_BYTES) -> bytes:
        """The bytes of a saved file (GET /view)."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        try:
            with self._http.stream("GET", "view", params=params) as response:
                if response.status_code != 200:
                    raise ComfyUIError(
                        f"ComfyUI could not serve {output.type} file "
                        f"{output.subfolder + '/' if output.subfolder else ''}{output.filename}: "
                        f"HTTP {response.status_code}"
                    )
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ComfyUIError(
                            f"ComfyUI output {output.filename} is larger than {max_bytes} bytes"
                        )
                    chunks.append(chunk)
        except httpx.HTTPError as error:
            raise ComfyUIConnectionError(
                f"cannot fetch {output.filename} from ComfyUI at {self.base_url}: "
                f"{_one_line(error)}"
            ) from error
        return b"".join(chunks)

    def system_stats(self) -> dict[str, Any]:
        """`system` (comfyui_version, python_version, ...) and `devices` (vram_total/free...)."""
        body = self._json("GET", "system_stats")
        if not isinstance(body, dict) or not isinstance(body.get("system"), dict):
            raise ComfyUIConnectionError(f"{self.base_url} did not answer like ComfyUI")
        return body

    def _names(self, folder: str) -> list[str]:
        body = self._json("GET", f"models/{folder}")
        if not isinstance(body, list) or not all(isinstance(n, str) for n in body):
            raise ComfyUIConnectionError(f"ComfyUI sent a malformed list of {folder}")
        return body

    def list_loras(self) -> list[str]:
        """The names LoraLoader accepts (files in ComfyUI's loras folder)."""
        return self._names("loras")

    def list_checkpoints(self) -> list[str]:
        """The names CheckpointLoaderSimple accepts."""
        return self._names("checkpoints")

    def node_types(self) -> frozenset[str]:
        """Every node type the server has (GET /object_info), read once per client."""
        if self._node_types is None:
            body = self._json("GET", "object_info")
            if not isinstance(body, dict) or not body:
                raise ComfyUIConnectionError(f"ComfyUI at {self.base_url} sent no node types")
            self._node_types = frozenset(body)
        return self._node_types

    def check_nodes(self, workflow: Workflow) -> None:
        """Refuse, before queueing, a workflow with node types the server does not have: one
        line naming them and the custom-node packs that provide them."""
        used = {n.get("class_type") for n in workflow.values() if isinstance(n, dict)}
        missing = sorted(str(t) for t in used - self.node_types() if t is not None)
        if missing:
            raise ComfyUIMissingNodesError(describe_missing_nodes(self.base_url, missing), missing)

    def object_info(self, node_class: str) -> dict[str, Any]:
        """A node class's schema ({} when ComfyUI does not have that node)."""
        if not isinstance(node_class, str) or not node_class or len(node_class) > 200:
            raise ComfyUIError(f"invalid node class name {node_class!r}")
        body = self._json("GET", f"object_info/{quote(node_class, safe='')}")
        if not isinstance(body, dict):
            raise ComfyUIConnectionError(f"ComfyUI sent malformed object info for {node_class}")
        return body.get(node_class, {})

    # --- stopping and freeing ---------------------------------------------------------------

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt `prompt_id` if it is the one running (ComfyUI ignores it otherwise);
        without an id, whatever is running."""
        body = {"prompt_id": _check_prompt_id(prompt_id)} if prompt_id is not None else None
        self._send("POST", "interrupt", json=body)

    def delete_from_queue(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts from ComfyUI's queue (a running one is not touched)."""
        ids = [_check_prompt_id(i) for i in prompt_ids]
        if ids:
            self._send("POST", "queue", json={"delete": ids})

    def cancel(self, prompt_id: str) -> CancelOutcome:
        """Stop a prompt wherever it is: removed from the queue, or interrupted if running."""
        state = self.queue()
        # Delete first: a pending prompt must not start between the interrupt and the delete.
        self.delete_from_queue([prompt_id])
        self.interrupt(prompt_id)
        if prompt_id in state.running:
            return "interrupted"
        return "removed" if prompt_id in state.pending else "not queued"

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask ComfyUI to unload its models and free memory (done when its worker is idle)."""
        self._send(
            "POST", "free", json={"unload_models": unload_models, "free_memory": free_memory}
        )


def _parse_frame(frame: str | bytes) -> tuple[str, dict[str, Any]] | None:
    if not isinstance(frame, str):
        return None  # a binary preview image
    with suppress(ValueError):
        message = json.loads(frame)
        if isinstance(message, dict) and isinstance(message.get("type"), str):
            data = message.get("data")
            return message["type"], data if isinstance(data, dict) else {}
    return None


def _progress(prompt_id: str, data: dict[str, Any]) -> ComfyUIProgress:
    def whole(value: object) -> int:
        return int(value) if isinstance(value, int | float) else 0

    return ComfyUIProgress(
        prompt_id, str(data.get("node")), whole(data.get("value")), whole(data.get("max"))
    )


def copy_to_comfyui(lora: Path, loras_dir: Path | str | None) -> Path | None:
    """ComfyUI's LoraLoader lists the files of its loras folder: put the LoRA there, under its
    file name (the name the workflows give it). None when no folder is configured."""
    if loras_dir is None:
        return None
    target = Path(loras_dir) / lora.name
    # A unique temporary name: two activations copying at once never share one.
    with atomic_path(target) as temporary:
        shutil.copyfile(lora, temporary)
    return target
