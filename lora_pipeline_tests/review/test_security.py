"""Safety of the review app: CSRF (Origin/Referer and a signed token), access token, bind
address, host names, paths, ids out of range, the catch-all error page."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from lora_pipeline.errors import PipelineError
from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Image
from lora_pipeline.review import views
from lora_pipeline.review.app import (
    ReviewAppError,
    _check_csrf_everywhere,
    check_bind,
    create_app,
    routes,
)
from lora_pipeline.review.security import (
    ACCESS_COOKIE,
    BROWSER_COOKIE,
    SECRET_FILE,
    InvalidTokenError,
    is_loopback,
)
from lora_pipeline.review.views.approve import REVIEWER_COOKIE
from lora_pipeline_tests.review.conftest import (
    BASE_URL,
    Studio,
    app_client,
    form_token,
    make_settings,
)

TOKEN = "s3cret-review-token"


def post_routes() -> list[str]:
    paths = []
    for route in routes():
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            path = re.sub(r"\{\w+:id\}", "1", route.path)
            paths.append(path.replace("{action}", "approve"))
    return paths


def test_every_post_route_is_listed() -> None:
    assert sorted(post_routes()) == [
        "/clusters/1/dismiss",
        "/clusters/1/label",
        "/echo-brain/accept",
        "/echo-brain/chat",
        "/echo-brain/enhance",
        "/gallery/comfyui/1/ingest",
        "/generate",
        "/images/1/approve",
        "/images/1/reject",
        "/images/tag",
        "/ingest",
        "/ingest/1/retry",
        "/jobs/clear-stuck",
        "/releases/1/approve",
        "/reviewer",
        "/suggestions/1/accept",
        "/suggestions/1/dismiss",
        "/train",
    ]


@pytest.mark.parametrize("path", post_routes())
def test_every_form_refuses_a_missing_or_wrong_csrf_token(studio: Studio, path: str) -> None:
    studio.add_image("aiko", 1)
    token = studio.csrf()
    for data in ({}, {"csrf_token": ""}, {"csrf_token": token + "x"}, {"csrf_token": "a" * 43}):
        response = studio.client.post(path, data={**data, "character": "aiko"})
        assert response.status_code == 403, (path, data)
        assert "CSRF check failed" in response.text
    # The right token in the form but not the browser it was made for: refused too.
    cookieless = studio.new_client()
    response = cookieless.post(
        path, data={"csrf_token": token}, headers={"accept": "application/json"}
    )
    assert response.status_code == 403 and "CSRF" in response.json()["error"]
    with studio.registry.session() as session:
        assert session.get(Image, 1).status == "pending"


def test_csrf_token_may_come_in_a_header(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = studio.client.post(
        f"/images/{image_id}/approve",
        headers={"x-csrf-token": studio.csrf(), "accept": "application/json"},
    )
    assert response.json()["status"] == "approved"


def test_pages_set_the_browser_cookie_and_put_a_signed_token_in_forms(studio: Studio) -> None:
    studio.add_image("aiko", 1)
    client = studio.new_client()
    response = client.get("/approve")
    browser_id = response.cookies[BROWSER_COOKIE]
    assert len(browser_id) >= 40
    flags = response.headers["set-cookie"].lower()
    assert "samesite=strict" in flags and "httponly" in flags
    # The form carries a token derived from the id, never the id itself.
    token = form_token(client, "/approve")
    assert len(token) == 64 and browser_id not in response.text
    # Set once: the next page keeps the same id and the same token.
    assert BROWSER_COOKIE not in client.get("/").cookies
    assert form_token(client) == token
    # Another browser gets another token.
    assert studio.csrf(studio.new_client()) != token


def test_a_cookie_of_the_wrong_shape_is_replaced_and_cannot_post(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    client = studio.new_client(cookies={BROWSER_COOKIE: "planted"})
    response = client.get("/ingest")
    assert response.cookies[BROWSER_COOKIE] != "planted"
    token = re.search(r'name="csrf_token" value="([^"]+)"', response.text).group(1)
    # The token of the new id is not valid for the planted cookie, sent again.
    client.cookies.clear()
    client.cookies.set(BROWSER_COOKIE, "planted")
    refused = client.post(f"/images/{image_id}/approve", data={"csrf_token": token})
    assert refused.status_code == 403


def test_unprotected_post_route_stops_the_app_from_starting() -> None:
    async def sloppy(request):  # pragma: no cover - never called
        return None

    with pytest.raises(ReviewAppError, match="POST /sloppy is not CSRF-protected"):
        _check_csrf_everywhere([Route("/sloppy", sloppy, methods=["POST"])])


def test_security_headers(studio: Studio) -> None:
    headers = studio.client.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    # Own pages keep their Origin and Referer (the CSRF check reads them); others get none.
    assert headers["referrer-policy"] == "same-origin"


# --- binding and access token -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "review.studio.lan"])
def test_non_loopback_bind_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ReviewAppError, match=f"refusing to listen on {host} without an access"):
        check_bind(host, None)
    check_bind(host, TOKEN)


def test_serve_refuses_a_public_address_without_token(studio: Studio) -> None:
    from lora_pipeline.review.app import serve

    with pytest.raises(ReviewAppError, match="without an access token"):
        serve(studio.settings, host="0.0.0.0", port=1)


def test_cli_refuses_a_public_address_without_token(capsys, project_home) -> None:
    from lora_pipeline.cli import main

    assert main(["review", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without an access token" in capsys.readouterr().err


def test_without_token_only_loopback_host_names_are_answered(studio: Studio) -> None:
    # A page that rebinds its own DNS name to 127.0.0.1 arrives with its own Host header.
    rebound = TestClient(studio.app, base_url="http://attacker.example:8765")
    assert rebound.get("/approve").status_code == 400
    assert TestClient(studio.app, base_url="http://localhost:8765").get("/").status_code == 200


@pytest.fixture
def guarded(studio: Studio) -> TestClient:
    app = create_app(studio.settings, access_token=TOKEN)
    url = "http://review.studio.lan"
    return app_client(app, base_url=url, headers={"origin": url})


def test_token_is_required(studio: Studio, guarded: TestClient) -> None:
    image_id = studio.add_image("aiko", 1)
    for path in ("/", "/approve", f"/images/{image_id}", "/jobs.json"):
        response = guarded.get(path)
        assert response.status_code == 401 and "/?token=" in response.text, path
    assert guarded.get("/healthz").status_code == 200
    assert guarded.get("/static/review.css").status_code == 200


def test_login_with_the_token_sets_a_cookie_and_drops_it_from_the_url(
    studio: Studio, guarded: TestClient
) -> None:
    response = guarded.get(f"/approve?token={TOKEN}&character=aiko", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/approve?character=aiko"
    cookie = response.cookies[ACCESS_COOKIE]
    assert TOKEN not in cookie
    assert "httponly" in response.headers["set-cookie"].lower()
    assert guarded.get("/approve").status_code == 200
    # The decision works with the cookie and the CSRF token.
    image_id = studio.add_image("aiko", 1)
    csrf = form_token(guarded)
    decided = guarded.post(f"/images/{image_id}/approve", data={"csrf_token": csrf})
    assert decided.status_code == 200 and f"Image {image_id} approved" in decided.text


def test_wrong_token_and_wrong_cookie_are_refused(guarded: TestClient) -> None:
    assert guarded.get("/?token=guess").status_code == 401
    guarded.cookies.set(ACCESS_COOKIE, "forged")
    assert guarded.get("/").status_code == 401


def test_bearer_token(studio: Studio, guarded: TestClient) -> None:
    assert guarded.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded.get("/", headers={"authorization": "Bearer nope"}).status_code == 401


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("abc", "at least 16 characters, this one has 3"),
        ("fifteen-chars-x", "at least 16 characters, this one has 15"),
        (" " * 8, "must not contain spaces"),
        ("a-long-enough-token with-a-space", "must not contain spaces"),
        ("a-long-enough-token\n", "must not contain spaces or line breaks"),
    ],
)
def test_a_weak_token_is_refused_before_the_app_exists(
    studio: Studio, token: str, message: str
) -> None:
    with pytest.raises(InvalidTokenError, match=message):
        check_bind("0.0.0.0", token)
    with pytest.raises(InvalidTokenError, match=message):
        create_app(studio.settings, access_token=token)


# --- images by id only --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/images/../registry.db",
        "/images/%2e%2e/registry.db",
        "/images/..%2Fregistry.db",
        "/images/1/../../registry.db",
        "/images/-1",
        "/images/abc",
        "/images/1.png",
        "/images/999",
        "/static/../registry.db",
        "/static/%2e%2e/app.py",
    ],
)
def test_path_tricks_find_nothing(studio: Studio, path: str) -> None:
    studio.add_image("aiko", 1)
    response = studio.client.get(path)
    assert response.status_code == 404, path
    assert b"SQLite" not in response.content


def test_an_image_row_pointing_outside_the_data_root_is_not_served(
    studio: Studio, tmp_path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    link = studio.root.path("images/link.png")
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, link)
    with studio.registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        image, _ = commands.add_image(session, aiko.id, "b" * 64, "images/link.png", 8, 8, "frame")
        gone, _ = commands.add_image(session, aiko.id, "c" * 64, "images/gone.png", 8, 8, "frame")
    for image_id in (image.id, gone.id):
        response = studio.client.get(f"/images/{image_id}")
        assert response.status_code == 404 and b"secret" not in response.content


# --- where a post comes from, and the secret its token is signed with --------------------------

JSON = {"accept": "application/json"}


def approve(client: TestClient, image_id: int, token: str, **headers: str):
    return client.post(
        f"/images/{image_id}/approve", data={"csrf_token": token}, headers={**JSON, **headers}
    )


def status_of(studio: Studio, image_id: int) -> str:
    with studio.registry.session() as session:
        return session.get(Image, image_id).status


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another port of this host: it can write our cookies
        "http://localhost",
        "https://127.0.0.1",
        "http://evil.example",
        "null",  # a sandboxed frame or a file:// page
        "garbage",
    ],
)
def test_a_post_from_another_origin_is_refused(studio: Studio, origin: str) -> None:
    image_id = studio.add_image("aiko", 1)
    # The browser's own valid token: only where the post comes from is wrong.
    response = approve(studio.client, image_id, studio.csrf(), origin=origin)
    assert response.status_code == 403
    assert response.json()["error"].startswith("CSRF check failed: this request was sent by")
    assert status_of(studio, image_id) == "pending"


def test_without_origin_the_referer_decides_and_without_both_a_post_is_refused(
    studio: Studio,
) -> None:
    image_id = studio.add_image("aiko", 1)
    # Sends no Origin of its own (its reviewer gave their name).
    plain = TestClient(studio.app, base_url=BASE_URL, cookies={REVIEWER_COOKIE: "tester"})
    token = form_token(plain)
    missing = approve(plain, image_id, token)
    assert missing.status_code == 403 and "neither which site" in missing.json()["error"]
    foreign = approve(plain, image_id, token, referer="http://127.0.0.1:9999/attack.html")
    assert foreign.status_code == 403 and "http://127.0.0.1:9999" in foreign.json()["error"]
    assert status_of(studio, image_id) == "pending"
    same = approve(plain, image_id, token, referer=f"{BASE_URL}/approve?character=aiko")
    assert same.status_code == 200 and status_of(studio, image_id) == "approved"


def test_a_same_origin_post_with_an_explicit_default_port_is_ours(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = approve(studio.client, image_id, studio.csrf(), origin="HTTP://127.0.0.1:80")
    assert response.status_code == 200 and status_of(studio, image_id) == "approved"


def test_the_secret_is_private_and_kept_across_restarts(studio: Studio) -> None:
    secret = studio.settings.home / SECRET_FILE
    assert secret.stat().st_mode & 0o777 == 0o600
    first = secret.read_bytes()
    assert len(first) >= 32
    token = studio.csrf()  # a page open in the browser before the restart
    browser_id = studio.client.cookies[BROWSER_COOKIE]
    os.chmod(secret, 0o644)  # loosened by hand: tightened again at the next start
    restarted = create_app(studio.settings)
    assert secret.read_bytes() == first
    assert secret.stat().st_mode & 0o777 == 0o600
    image_id = studio.add_image("aiko", 1)
    same_browser = app_client(restarted, cookies={BROWSER_COOKIE: browser_id})
    assert approve(same_browser, image_id, token).json()["status"] == "approved"


def test_a_token_signed_under_another_homes_secret_is_refused(
    studio: Studio, tmp_path: Path
) -> None:
    other = make_settings(tmp_path / "other-home")
    elsewhere = app_client(create_app(other))
    token = form_token(elsewhere)
    browser_id = elsewhere.cookies[BROWSER_COOKIE]
    image_id = studio.add_image("aiko", 1)
    here = studio.new_client(cookies={BROWSER_COOKIE: browser_id})
    assert approve(here, image_id, token).status_code == 403
    assert status_of(studio, image_id) == "pending"


def test_a_damaged_secret_stops_the_start_with_one_line(studio: Studio) -> None:
    (studio.settings.home / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(PipelineError, match="review_secret is damaged"):
        create_app(studio.settings)


def test_a_login_link_followed_from_another_page_is_refused(studio: Studio) -> None:
    # A navigation (GET) carries no Origin, only Referer and Sec-Fetch-Site.
    guarded = TestClient(
        create_app(studio.settings, access_token=TOKEN), base_url="http://review.studio.lan"
    )
    for headers in (
        {"sec-fetch-site": "same-site"},
        {"referer": "http://127.0.0.1:9999/attack.html"},
    ):
        response = guarded.get(f"/?token={TOKEN}", headers=headers, follow_redirects=False)
        assert response.status_code == 403 and ACCESS_COOKIE not in response.cookies
    typed_in = guarded.get(f"/?token={TOKEN}", headers={"sec-fetch-site": "none"})
    assert typed_in.status_code == 200


# --- ids no row can have ---------------------------------------------------------------------

OUT_OF_RANGE = ["0", "-1", str(2**63), "9" * 40]


@pytest.mark.parametrize("number", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("template", "noun"),
    [
        ("/images/{}", "image"),
        ("/images/{}/thumb", "image"),
        ("/gallery/{}", "image"),
        ("/jobs/{}/output", "job"),
        ("/evals/{}/grid", "eval"),
        ("/crops/{}", "crop"),
        ("/crops/{}/thumb", "crop"),
    ],
)
def test_an_id_out_of_range_is_404_with_one_line(
    studio: Studio, template: str, noun: str, number: str
) -> None:
    expected = f"no {noun} {number}: ids are whole numbers from 1 to {2**63 - 1}"
    page = studio.client.get(template.format(number))
    assert page.status_code == 404 and expected in page.text
    answer = studio.client.get(template.format(number), headers=JSON)
    assert answer.status_code == 404 and answer.json()["error"] == expected


@pytest.mark.parametrize("number", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("template", "noun"),
    [
        ("/images/{}/approve", "image"),
        ("/images/{}/reject", "image"),
        ("/releases/{}/approve", "release"),
        ("/suggestions/{}/accept", "suggestion"),
        ("/clusters/{}/label", "cluster"),
        ("/clusters/{}/dismiss", "cluster"),
    ],
)
def test_a_decision_on_an_id_out_of_range_is_404_with_one_line(
    studio: Studio, template: str, noun: str, number: str
) -> None:
    response = studio.client.post(
        template.format(number), data={"csrf_token": studio.csrf()}, headers=JSON
    )
    assert response.status_code == 404
    message = response.json()["error"]
    assert message.startswith(f"no {noun} {number}: ids are whole numbers") and "\n" not in message


# --- the catch-all ----------------------------------------------------------------------------


def test_an_unexpected_error_is_a_500_with_an_error_id_found_in_the_log(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(views, "gallery_page", broken)
    client = TestClient(
        create_app(studio.settings), base_url=BASE_URL, raise_server_exceptions=False
    )
    page = client.get("/gallery")
    assert page.status_code == 500
    assert "Traceback" not in page.text and "the disk caught fire" not in page.text
    (page_id,) = re.findall(r"error ([0-9a-f]{12})", page.text)
    answer = client.get("/gallery", headers=JSON)
    assert answer.status_code == 500
    body = answer.json()
    assert body["error_id"] != page_id and body["error_id"] in body["error"]
    assert "\n" not in body["error"]
    log = (studio.settings.home / "logs" / "review-app.log").read_text()
    for error_id in (page_id, body["error_id"]):
        entry = log[log.index(f"error {error_id} on GET /gallery") :]
        assert "Traceback (most recent call last)" in entry
        assert "RuntimeError: the disk caught fire" in entry
    # Only the broken page fails: the rest of the app still answers.
    assert client.get("/approve").status_code == 200


# --- the token, checked before anything starts -------------------------------------------------


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(home))
    for name in ("DATABASE_URL", "DATA_ROOT"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    return home


@pytest.mark.parametrize(
    ("where", "token", "message"),
    [
        ("option", "short", "at least 16 characters, this one has 5"),
        ("option", "abc", "at least 16 characters, this one has 3"),
        ("environment", " " * 8, "must not contain spaces"),
        ("environment", "sixteen chars ok", "must not contain spaces"),
    ],
)
def test_cli_refuses_a_weak_token_in_one_line_before_starting(
    cli_home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    token: str,
    message: str,
) -> None:
    from lora_pipeline.cli import main
    from lora_pipeline.review import app as review_app

    started: list[object] = []
    monkeypatch.setattr(review_app, "serve", lambda *args, **kwargs: started.append(args))
    argv = ["review", "--host", "0.0.0.0"]
    if where == "option":
        argv += ["--token", token]
    else:
        monkeypatch.setenv("LORA_PIPELINE_REVIEW_TOKEN", token)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: the review token") and err.count("\n") == 1
    assert message in err and "Traceback" not in err
    assert out == "" and started == []


def test_cli_starts_with_a_good_token(
    cli_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.cli import main
    from lora_pipeline.review import app as review_app

    started: list[dict] = []
    monkeypatch.setattr(review_app, "serve", lambda *args, **kwargs: started.append(kwargs))
    assert main(["review", "--host", "0.0.0.0", "--token", TOKEN]) == 0
    assert started[0]["access_token"] == TOKEN
    assert "log in once with /?token=" in capsys.readouterr().out
