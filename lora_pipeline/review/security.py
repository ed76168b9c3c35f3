"""The review app's guards: access token, CSRF, body limits, browser safety headers.

- Access token: a non-loopback bind needs one (`serve` refuses otherwise). A browser logs in
  once with `/?token=…` and then carries an HttpOnly cookie derived from the token; scripts send
  `Authorization: Bearer …`.
- Without a token the app answers only to loopback host names, so a web page that rebinds its
  own DNS name to 127.0.0.1 cannot read the queue.
- CSRF, two checks on every POST, both before anything is done (403 otherwise):
  1. the request comes from this app's own page: its `Origin` (or, without one, its `Referer`)
     is the scheme, host and port the request is addressed to. Cookies do not keep ports apart,
     so a page on another port of this host can write our cookies; it cannot send our Origin.
  2. the form's `csrf_token` (or the `X-CSRF-Token` header) is the HMAC of the browser's random
     id cookie (`lp_browser`, HttpOnly) under a secret kept in the home (`review_secret`, mode
     0600, made once). A cookie planted by another origin has no matching token.
  The token-mode login (`/?token=…`) is refused when another page (Origin, Referer or the
  browser's Sec-Fetch-Site) sent the browser there.
- Body limits: forms are small; uploads have their own limit, enforced while the body streams
  in, so an oversized upload is cut off instead of being stored first.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import FormData, Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lora_pipeline.errors import PipelineError

# A form's fields, at most: the tag form names each chosen image (up to 500 at once).
MAX_FORM_FIELDS = 600
ACCESS_COOKIE = "lp_access"
BROWSER_COOKIE = "lp_browser"
SECRET_FILE = "review_secret"
SECRET_BYTES = 32
# What `secrets.token_urlsafe(32)` makes; anything else in the cookie is replaced.
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{43}")
MIN_TOKEN_CHARS = 16
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
    # The login URL carries the token: never send it to another site. Same-origin requests
    # keep their Origin and Referer, which the CSRF check reads ("no-referrer" would make a
    # browser send `Origin: null` on our own forms).
    "referrer-policy": "same-origin",
}
DEFAULT_PORTS = {"http": 80, "https": 443}
CSRF_FAILED = (
    "CSRF check failed: this form's security token is missing or does not match your "
    "browser's. Reload the page and submit again."
)
FOREIGN_ORIGIN = (
    "CSRF check failed: this request was sent by a page of {sender}, not of this app ({own}). "
    "Open the app at {own} and submit from there."
)
NO_ORIGIN = (
    "CSRF check failed: the request says neither which site sent it (Origin) nor which page "
    "(Referer). Submit the form from the app's own page."
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


class InvalidTokenError(PipelineError, ValueError):
    """An access token too short or blank to keep anyone out."""


def check_token(token: str) -> str:
    """`token` if it can serve as the access token; InvalidTokenError says why not."""
    if any(char.isspace() for char in token):
        raise InvalidTokenError(
            "the review token must not contain spaces or line breaks (they do not survive a "
            "URL or an Authorization header)"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidTokenError(
            f"the review token must have at least {MIN_TOKEN_CHARS} characters, this one has "
            f"{len(token)}; make one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(24))'"
        )
    return token


def load_secret(home: Path) -> bytes:
    """The app's CSRF secret in `<home>/review_secret`: made once with secure random, mode
    0600, and kept, so a restart leaves open pages' tokens valid."""
    path = Path(home) / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{SECRET_FILE}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(SECRET_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        # A link never replaces: when two apps start at once, the first secret is everyone's.
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    finally:
        os.unlink(scratch)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise PipelineError(f"{path} is damaged (under {SECRET_BYTES} bytes): remove it")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # others must not read what signs the forms
    return secret


class CsrfSigner:
    """Form tokens bound to a browser id by an HMAC under the app's secret."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def token_for(self, browser_id: str) -> str:
        digest = hmac.new(self.secret, b"csrf:" + browser_id.encode(), hashlib.sha256)
        return digest.hexdigest()


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, ports filled in; None when it has none (`null`)."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def _show(origin: tuple[str, str, int] | None) -> str:
    if origin is None:
        return "an unknown site"
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if DEFAULT_PORTS[scheme] == port else f":{port}")


def origin_error(request: Request, *, required: bool = True) -> str | None:
    """Why `request` was not sent by a page of this app (None when it was).

    This app's origin is the scheme, host and port the request is addressed to. `Origin`
    decides when present (`null` included); otherwise `Referer`; with neither, `required`
    says whether that is a refusal (a form post) or fine (a link typed in).
    """
    own = _origin_of(str(request.url))
    sent = request.headers.get("origin")
    if sent is None:
        sent = request.headers.get("referer")
    if sent is None:
        return NO_ORIGIN if required else None
    sender = _origin_of(sent)
    if own is None or sender != own:
        return FOREIGN_ORIGIN.format(sender=_show(sender), own=_show(own))
    return None


def _access_cookie_value(token: str) -> str:
    # The cookie is derived from the token, so a leaked cookie does not reveal the token.
    return hmac.new(token.encode(), b"lora-pipeline review session", hashlib.sha256).hexdigest()


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def message_page(status: int, title: str, message: str) -> HTMLResponse:
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
        await message_page(
            401,
            "Access token required",
            "This review app is protected: open /?token=YOUR-TOKEN once in this browser, or "
            "send the header 'Authorization: Bearer YOUR-TOKEN'.",
        )(scope, receive, send)

    def _login(self, request: Request, offered: str) -> Response:
        refused = _login_refusal(request)
        if refused is not None:
            return message_page(403, "Log in from the address bar", refused)
        if not _same(offered, self.token):
            return message_page(401, "Wrong access token", "The token in the link is wrong.")
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


def _login_refusal(request: Request) -> str | None:
    """Why a login link may not be followed: another page sent the browser to it (a link typed
    or pasted into the address bar has no Origin or Referer, and Sec-Fetch-Site `none`)."""
    site = request.headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return (
            "another page sent your browser to this login link; "
            "paste the link into the address bar instead"
        )
    return origin_error(request, required=False)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BrowserSafetyMiddleware:
    """Adds the security headers to every answer, and gives a browser its id cookie on the
    first request; `request.state.csrf_token` is the token its forms carry, and
    `request.state.browser_known` says whether the browser came with its id."""

    def __init__(self, app: ASGIApp, signer: CsrfSigner) -> None:
        self.app = app
        self.signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookie = Request(scope).cookies.get(BROWSER_COOKIE)
        known = cookie is not None and _BROWSER_ID.fullmatch(cookie) is not None
        browser_id = cookie if known and cookie else secrets.token_urlsafe(32)
        state = scope.setdefault("state", {})
        state["csrf_token"] = self.signer.token_for(browser_id)
        state["browser_known"] = known
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not known:
                    # HttpOnly: the page's script posts the token from the form, never this.
                    flags = "; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
                    headers.append("set-cookie", f"{BROWSER_COOKIE}={browser_id}{flags}")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def csrf_protected(handler: FormEndpoint) -> Endpoint:
    """Wrap a POST handler: check where it comes from (before its body is read), parse the
    form and check its CSRF token, all before the handler runs."""

    @wraps(handler)
    async def endpoint(request: Request) -> Response:
        foreign = origin_error(request)
        if foreign is not None:
            raise HTTPException(403, foreign)
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        offered = form.get(CSRF_FIELD)
        if not isinstance(offered, str):
            offered = request.headers.get(CSRF_HEADER)
        known = getattr(request.state, "browser_known", False)
        if not offered or not known or not _same(offered, request.state.csrf_token):
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
        # isascii: isdigit() alone takes "²", which int() refuses.
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            error = BodyTooLarge(limit)
            await message_page(413, "Too large", str(error.detail))(scope, receive, send)
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
