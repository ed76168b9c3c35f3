"""Safety of the review app: CSRF, access token, bind address, host names, paths."""

from __future__ import annotations

import os

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Image
from lora_pipeline.review.app import (
    ReviewAppError,
    _check_csrf_everywhere,
    check_bind,
    create_app,
    routes,
)
from lora_pipeline.review.security import ACCESS_COOKIE, CSRF_COOKIE, is_loopback
from lora_pipeline_tests.review.conftest import Studio

TOKEN = "s3cret-review-token"


def post_routes() -> list[str]:
    paths = []
    for route in routes():
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            path = route.path.replace("{image_id:int}", "1").replace("{suggestion_id:int}", "1")
            paths.append(path.replace("{release_id:int}", "1").replace("{action}", "approve"))
    return paths


def test_every_post_route_is_listed() -> None:
    assert sorted(post_routes()) == [
        "/generate",
        "/images/1/approve",
        "/images/1/reject",
        "/ingest",
        "/jobs/clear-stuck",
        "/releases/1/approve",
        "/suggestions/1/accept",
        "/suggestions/1/dismiss",
    ]


@pytest.mark.parametrize("path", post_routes())
def test_every_form_refuses_a_missing_or_wrong_csrf_token(studio: Studio, path: str) -> None:
    studio.add_image("aiko", 1)
    token = studio.csrf()
    for data in ({}, {"csrf_token": ""}, {"csrf_token": token + "x"}, {"csrf_token": "a" * 43}):
        response = studio.client.post(path, data={**data, "character": "aiko"})
        assert response.status_code == 403, (path, data)
        assert "CSRF check failed" in response.text
    # The right token in the form but no cookie (another site's forged post): refused too.
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


def test_pages_set_the_csrf_cookie_and_put_it_in_forms(studio: Studio) -> None:
    studio.add_image("aiko", 1)
    client = studio.new_client()
    response = client.get("/approve")
    cookie = response.cookies[CSRF_COOKIE]
    assert len(cookie) >= 40
    assert f'name="csrf_token" value="{cookie}"' in response.text
    assert "samesite=strict" in response.headers["set-cookie"].lower()
    # Set once: the next page keeps the same token.
    assert CSRF_COOKIE not in client.get("/").cookies


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
    assert headers["referrer-policy"] == "no-referrer"


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
    return TestClient(app, base_url="http://review.studio.lan")


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
    csrf = guarded.cookies[CSRF_COOKIE]
    decided = guarded.post(f"/images/{image_id}/approve", data={"csrf_token": csrf})
    assert decided.status_code == 200 and f"Image {image_id} approved" in decided.text


def test_wrong_token_and_wrong_cookie_are_refused(guarded: TestClient) -> None:
    assert guarded.get("/?token=guess").status_code == 401
    guarded.cookies.set(ACCESS_COOKIE, "forged")
    assert guarded.get("/").status_code == 401


def test_bearer_token(studio: Studio, guarded: TestClient) -> None:
    assert guarded.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded.get("/", headers={"authorization": "Bearer nope"}).status_code == 401


def test_short_token_is_refused(studio: Studio) -> None:
    with pytest.raises(ValueError, match="at least 8 characters"):
        TestClient(create_app(studio.settings, access_token="abc")).get("/")


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
