"""The review web app: Characters, Approve, Generate, Gallery, Ingest, Releases, Train and
Clusters tabs.

`create_app(settings)` builds the Starlette application; `serve(settings)` runs it with uvicorn
on 127.0.0.1 (`lora-pipeline review`). Binding any other address needs an access token.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import wraps
from pathlib import Path

import jinja2
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lora_pipeline.config import Settings
from lora_pipeline.errors import (
    DISK_FULL,
    PipelineError,
    disk_full,
    error_log,
    record_unexpected,
    user_message,
)
from lora_pipeline.generation.negatives import NegativeTableError
from lora_pipeline.generation_settings import MAX_SEED, InvalidSettingError
from lora_pipeline.media.store import DataRoot, UnsafePathError
from lora_pipeline.media.uploads import UploadError, sweep_incoming
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import ConflictError, InvalidInputError, NotFoundError
from lora_pipeline.review import views
from lora_pipeline.review.decoding import PixelBudget, Thumbnails, return_freed_pixels
from lora_pipeline.review.pipeline_state import RunSource
from lora_pipeline.review.security import (
    LOOPBACK_HOSTS,
    AccessTokenMiddleware,
    BodyLimitMiddleware,
    BrowserSafetyMiddleware,
    CsrfSigner,
    InvalidTokenError,
    check_token,
    is_loopback,
    load_secret,
    message_page,
)
from lora_pipeline.training.launch import TrainingSubmitter

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024**2
MAX_FORM_BYTES = 1024**2
# Multipart framing around the file: boundaries, headers, the other fields.
UPLOAD_OVERHEAD_BYTES = 64 * 1024
SERVER_START_TIMEOUT_S = 30.0
ERROR_STATUS = {
    NotFoundError: 404,
    InvalidInputError: 400,
    ConflictError: 409,
    UploadError: 400,
    UnsafePathError: 400,
    NegativeTableError: 500,
    InvalidSettingError: 400,
    InvalidTokenError: 400,
}
# Registry ids are BIGINTs: a larger number names nothing (and would overflow the database).
MAX_ID = MAX_SEED
ID_NOUNS = {
    "image_id": "image",
    "job_id": "job",
    "release_id": "release",
    "eval_id": "eval",
    "suggestion_id": "suggestion",
    "source_id": "source",
    "output_id": "ComfyUI output file",
    "cluster_id": "cluster",
    "crop_id": "crop",
}
ERROR_LOG = ("logs", "review-app.log")
# "Insufficient Storage": the server could not store what the request needed.
DISK_FULL_STATUS = 507


class IdConvertor(Convertor[int]):
    """`{name:id}`: any whole number, signed, so that one out of range gets its own 404
    (`_ids_checked`) instead of a generic one, or an overflow in the database."""

    regex = "-?[0-9]+"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())


class ReviewAppError(PipelineError):
    """The app cannot start as asked (e.g. a public address without an access token)."""


def routes() -> list[BaseRoute]:
    return [
        Route("/", views.characters_page),
        Route("/approve", views.approve_page),
        _route("/images/{image_id:id}", views.image_file),
        _route("/images/{image_id:id}/thumb", views.image_thumbnail),
        _route("/images/{image_id:id}/approve", views.approve_image, methods=["POST"]),
        _route("/images/{image_id:id}/reject", views.reject_image, methods=["POST"]),
        _route("/images/{image_id:id}/details.json", views.image_details),
        Route("/images/tag", views.tag_images_action, methods=["POST"]),
        Route("/reviewer", views.set_reviewer, methods=["POST"]),
        Route("/generate", views.generate_page),
        Route("/generate", views.request_generation_action, methods=["POST"]),
        Route("/jobs.json", views.jobs_json),
        Route("/jobs/clear-stuck", views.clear_stuck, methods=["POST"]),
        _route("/jobs/{job_id:id}/output", views.job_output),
        Route("/releases", views.releases_page),
        Route("/releases.json", views.releases_json),
        _route("/releases/{release_id:id}/{action}", views.release_action, methods=["POST"]),
        _route("/evals/{eval_id:id}/grid", views.eval_grid),
        _route("/evals/{eval_id:id}/cells/{index:int}", views.eval_cell),
        Route("/gallery", views.gallery_page),
        _route("/gallery/{image_id:id}", views.gallery_view),
        _route(
            "/gallery/comfyui/{output_id:id}/ingest", views.ingest_output_action, methods=["POST"]
        ),
        Route("/ingest", views.ingest_page),
        Route("/ingest", views.ingest_action, methods=["POST"]),
        _route("/ingest/{source_id:id}/retry", views.retry_ingest_action, methods=["POST"]),
        _route("/suggestions/{suggestion_id:id}/accept", views.accept_suggestion, methods=["POST"]),
        _route(
            "/suggestions/{suggestion_id:id}/dismiss", views.dismiss_suggestion, methods=["POST"]
        ),
        Route("/clusters", views.clusters_page),
        _route("/clusters/{cluster_id:id}/label", views.label_cluster_action, methods=["POST"]),
        _route("/clusters/{cluster_id:id}/dismiss", views.dismiss_cluster_action, methods=["POST"]),
        _route("/crops/{crop_id:id}", views.crop_file),
        _route("/crops/{crop_id:id}/thumb", views.crop_thumbnail),
        Route("/echo-brain", views.echo_brain_page),
        Route("/echo-brain/chat", views.echo_brain_chat, methods=["POST"]),
        Route("/echo-brain/enhance", views.echo_brain_enhance, methods=["POST"]),
        Route("/echo-brain/accept", views.echo_brain_accept, methods=["POST"]),
        Route("/train", views.train_page),
        Route("/train", views.start_training, methods=["POST"]),
        Route("/train/plan.json", views.train_plan_json),
        Route("/state.json", views.state_json),
        Route("/state/{slug}/sample", views.training_sample),
        Route("/healthz", views.healthz),
        Route("/favicon.ico", views.favicon),
        Mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static"),
    ]


def _route(path: str, endpoint: Callable, **kwargs: object) -> Route:
    return Route(path, _ids_checked(endpoint), **kwargs)  # type: ignore[arg-type]


def _check_ids(request: Request) -> None:
    for key, noun in ID_NOUNS.items():
        value = request.path_params.get(key)
        if value is not None and not 1 <= value <= MAX_ID:
            raise HTTPException(404, f"no {noun} {value}: ids are whole numbers from 1 to {MAX_ID}")


def _ids_checked(endpoint: Callable) -> Callable:
    """`endpoint`, answering 404 for an id in its path that no row can have."""
    if inspect.iscoroutinefunction(endpoint):

        @wraps(endpoint)
        async def checked_async(request: Request) -> Response:
            _check_ids(request)
            return await endpoint(request)

        return checked_async

    @wraps(endpoint)
    def checked(request: Request) -> Response:
        _check_ids(request)
        return endpoint(request)

    return checked


def _check_csrf_everywhere(app_routes: list[BaseRoute]) -> None:
    """Every route that accepts a form must check its CSRF token: fail at start otherwise."""
    for route in app_routes:
        posts = isinstance(route, Route) and "POST" in (route.methods or ())
        if posts and not getattr(route.endpoint, "csrf_protected", False):
            raise ReviewAppError(f"POST {route.path} is not CSRF-protected")


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["filesize"] = _file_size
    return Jinja2Templates(env=environment)


def _file_size(count: int | None) -> str:
    if count is None:
        return "missing"
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _error_response(request: Request, status: int, message: str) -> Response:
    if views.wants_json(request):
        return JSONResponse({"ok": False, "error": message}, status_code=status)
    titles = {
        400: "Cannot do that",
        403: "Forbidden",
        404: "Not found",
        409: "Already decided",
        507: "The disk is full",
    }
    return views.render(
        request,
        "message.html",
        status=status,
        title=titles.get(status, "Error"),
        error=message,
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error_response(request, error.status_code, str(error.detail))


def _domain_error(status: int) -> Callable[[Request, Exception], Response]:
    def handler(request: Request, error: Exception) -> Response:
        # An upload refused because the disk filled up is the disk's fault, not the file's.
        return _error_response(
            request, DISK_FULL_STATUS if disk_full(error) else status, user_message(error)
        )

    return handler


def _unexpected_error(log: logging.Logger) -> Callable[[Request, Exception], Response]:
    """The one catch-all: a bug answers 500 with a short message and an error id; the
    traceback goes to the log under that id. A full disk (a write anywhere: an upload, a
    thumbnail, the registry) is no bug: 507 and the one line that says so."""

    def handler(request: Request, error: Exception) -> Response:
        if disk_full(error):
            message = f"cannot save: {DISK_FULL}"
            if views.wants_json(request):
                return JSONResponse({"ok": False, "error": message}, DISK_FULL_STATUS)
            return message_page(DISK_FULL_STATUS, "The disk is full", message)
        error_id = record_unexpected(log, error, f"{request.method} {request.url.path}")
        message = (
            f"Something went wrong on our side (error {error_id}); nothing was changed by "
            f"the part that failed. The details are in {'/'.join(ERROR_LOG)} of the project "
            "home under that id."
        )
        if views.wants_json(request):
            return JSONResponse({"ok": False, "error": message, "error_id": error_id}, 500)
        # A plain page: the error may have come before the templates' state was set.
        return message_page(500, "Internal error", message)

    return handler


def comfyui_canceller(settings: Settings) -> Callable[[str], object] | None:
    """Stops a prompt in ComfyUI (interrupt when running, delete when queued)."""
    if not settings.comfyui_url:
        return None
    from lora_pipeline.generation.comfyui import ComfyUIClient

    client = ComfyUIClient(settings.comfyui_url, http_timeout=10.0)
    return client.cancel


def create_app(
    settings: Settings,
    access_token: str | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS,
    cancel_prompt: Callable[[str], object] | None = None,
    runs: RunSource | None = None,
    submit_training: TrainingSubmitter | None = None,
) -> Starlette:
    """The review app on the registry and data root of `settings`.

    With `access_token`, every request must carry it (cookie after `/?token=…`, or a bearer
    header); without one, only requests addressed to `allowed_hosts` are answered.
    `cancel_prompt` overrides how a stuck job's ComfyUI prompt is stopped; `runs` and
    `submit_training` are the Dagster instance's runs and its queue, from whoever may import
    Dagster (`lora-pipeline review`).
    """
    settings.ensure_dirs()
    if access_token is not None:
        check_token(access_token)
    migrate(settings.database_url)
    registry = Registry(settings.database_url)
    app_routes = routes()
    _check_csrf_everywhere(app_routes)
    signer = CsrfSigner(load_secret(settings.home))
    middleware = [Middleware(BrowserSafetyMiddleware, signer=signer)]
    if access_token is not None:
        middleware.insert(0, Middleware(AccessTokenMiddleware, token=access_token))
    else:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    middleware.append(
        Middleware(
            BodyLimitMiddleware,
            default_limit=MAX_FORM_BYTES,
            limits={"/ingest": max_upload_bytes + UPLOAD_OVERHEAD_BYTES},
        )
    )

    log = error_log(settings.home, ERROR_LOG[-1])

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        registry.dispose()
        for handler in log.handlers:
            handler.close()

    handlers: dict[type[Exception] | int, Callable] = {HTTPException: _http_error}
    handlers.update({kind: _domain_error(status) for kind, status in ERROR_STATUS.items()})
    handlers[Exception] = _unexpected_error(log)
    # Answered inside the routes' exception layer, so a full disk is not re-raised to uvicorn
    # as a crash; any other OSError goes on to the catch-all.
    handlers[OSError] = handlers[Exception]
    app = Starlette(
        routes=app_routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
    root = DataRoot(settings.data_root)
    sweep_incoming(root)  # what uploads cut short by a crash of an earlier run left
    budget = PixelBudget(settings.review_decode_pixels)
    return_freed_pixels()
    app.state.review = views.ReviewContext(
        settings=settings,
        registry=registry,
        root=root,
        templates=_templates(),
        max_upload_bytes=max_upload_bytes,
        decode_budget=budget,
        thumbnails=Thumbnails(root, budget),
        cancel_prompt=cancel_prompt if cancel_prompt is not None else comfyui_canceller(settings),
        runs=runs,
        submit_training=submit_training,
    )
    return app


def check_bind(host: str, access_token: str | None) -> None:
    """Refuse, before anything starts, a bad token or a public address without one."""
    if access_token is not None:
        check_token(access_token)
    if not is_loopback(host) and not access_token:
        raise ReviewAppError(
            f"refusing to listen on {host} without an access token: anyone who can reach it "
            "could approve and reject images. Pass --token (or set LORA_PIPELINE_REVIEW_TOKEN), "
            "or bind 127.0.0.1"
        )


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    access_token: str | None = None,
    log_level: str = "info",
    runs: RunSource | None = None,
    submit_training: TrainingSubmitter | None = None,
) -> None:
    """Run the review app until interrupted; `runs` gives it the Dagster runs to show and
    `submit_training` the queue the Train tab puts its runs in."""
    import uvicorn

    check_bind(host, access_token)
    # Behind a token, any Host header is fine: the token is what keeps strangers out.
    app = create_app(
        settings, access_token=access_token, runs=runs, submit_training=submit_training
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


@contextmanager
def background_server(app: Starlette, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn in a thread on a free port; yields its base URL.

    For browser tests and benchmarks: the socket is bound before uvicorn starts, so there is
    no window in which another process could take the port.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise ReviewAppError("the review app did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)
        sock.close()
