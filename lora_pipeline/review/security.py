"""The review app's guards: access token, CSRF, body limits, browser safety headers.

- Access token: a non-loopback bind needs one (`serve` refuses otherwise). A browser logs in
  once with `/?token=…` and then carries an HttpOnly cookie derived from the token; scripts send
  `Authorization: Bearer …`.
- Without a token the app answers only to loopback host names, so a web page that rebinds its
  own DNS name to 127.0.0.1 cannot read the queue.
- CSRF: double-submit cookie. Every page gets a random `lp_csrf` cookie; every form carries the
  same value in `csrf_token` (or the `X-CSRF-Token` header); the two are compared in constant
  time, and a POST without a match is refused with 403 before anything is done.
- Body limits: forms are small; uploads have their own limit, enforced while the body streams
  in, so an oversized upload is cut off instead of being stored first.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from html import escape
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lora_pipeline.errors import PipelineError

ACCESS_COOKIE = "lp_access"
CSRF_COOKIE = "lp_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TOKEN_QUERY = "token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
PUBLIC_PATHS = ("/healthz",)
PUBLIC_PREFIXES = ("/static/",)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    # Scripts and styles come from /static only: no inline code can run, even if a value
    # escaped the template's escaping.
    "content-security-policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # The login URL carries the token; never send it to another site.
    "referrer-policy": "no-referrer",
}
CSRF_FAILED = (
    "CSRF check failed: this form's security token is missing or does not match your "
    "browser's. Reload the page and submit again."
)

Endpoint = Callable[[Request], Awaitable[Response]]
FormEndpoint = Callable[[Request, FormData], Awaitable[Response]]


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def _access_cookie_value(token: str) -> str:
    # The cookie is derived from the token, so a leaked cookie does not reveal the token.
    return hmac.new(token.encode(), b"lora-pipeline review session", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _message_page(status: int, title: str, message: str) -> HTMLResponse:
    # Plain HTML without templates: these answers come before the app itself runs.
    title, message = escape(title), escape(message)
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<link rel='stylesheet' href='/static/review.css'></head><body><main>"
        f"<h1>{title}</h1><p class='error'>{message}</p></main></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


class AccessTokenMiddleware:
    """Requires the access token on every request but /healthz and /static."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token or len(token) < 8:
            raise ValueError("the access token must have at least 8 characters")
        self.app = app
        self.token = token
        self.cookie_value = _access_cookie_value(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        offered = request.query_params.get(TOKEN_QUERY)
        if offered is not None:
            await self._login(request, offered)(scope, receive, send)
            return
        authorization = request.headers.get("authorization", "")
        bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        cookie = request.cookies.get(ACCESS_COOKIE)
        if _same(bearer, self.token) or _same(cookie, self.cookie_value):
            await self.app(scope, receive, send)
            return
        await _message_page(
            401,
            "Access token required",
            "This review app is protected: open /?token=YOUR-TOKEN once in this browser, or "
            "send the header 'Authorization: Bearer YOUR-TOKEN'.",
        )(scope, receive, send)

    def _login(self, request: Request, offered: str) -> Response:
        if not _same(offered, self.token):
            return _message_page(401, "Wrong access token", "The token in the link is wrong.")
        # Drop the token from the address bar and history once the cookie carries it.
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_QUERY]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            ACCESS_COOKIE,
            self.cookie_value,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BrowserSafetyMiddleware:
    """Adds the security headers to every answer, and gives a browser its CSRF cookie on the
    first request (the value is in `request.state.csrf_token` for the templates)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = Request(scope).cookies.get(CSRF_COOKIE)
        token = cookie or secrets.token_urlsafe(32)
        scope.setdefault("state", {})["csrf_token"] = token
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if cookie is None:
                    # Readable by the page's script (it posts the form's token), but SameSite
                    # keeps other sites from sending it.
                    flags = "; Path=/; SameSite=Strict" + ("; Secure" if secure else "")
                    headers.append("set-cookie", f"{CSRF_COOKIE}={token}{flags}")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_protected(handler: FormEndpoint) -> Endpoint:
    """Wrap a POST handler: parse the form and check its CSRF token before the handler runs."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        form = await request.form(max_files=1, max_fields=100)
        offered = form.get(CSRF_FIELD)
        if not isinstance(offered, str):
            offered = request.headers.get(CSRF_HEADER)
        cookie = request.cookies.get(CSRF_COOKIE)
        if not offered or not cookie or not _same(offered, cookie):
            raise HTTPException(403, CSRF_FAILED)
        return await handler(request, form)

    endpoint.csrf_protected = True  # type: ignore[attr-defined]
    return endpoint


class BodyTooLarge(PipelineError, HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request is over the {_size(limit)} limit")


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:g} {unit}" if unit == "bytes" else f"{count:.4g} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} bytes"  # pragma: no cover


class BodyLimitMiddleware:
    """Refuses request bodies over a limit: at once from Content-Length, and otherwise as
    soon as the streamed body passes it (chunked uploads have no Content-Length)."""

    def __init__(self, app: ASGIApp, default_limit: int, limits: Mapping[str, int]) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = BodyTooLarge(limit)
            await _message_page(413, "Too large", str(error.detail))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def page_url(path: str, **params: Any) -> str:
    """`path` with the non-empty params as its query string."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + (f"?{urlencode(kept)}" if kept else "")
