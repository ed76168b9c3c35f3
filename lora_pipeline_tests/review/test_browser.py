"""The Approve tab in a real browser: Debian's Chromium driven by Playwright against uvicorn on
127.0.0.1, then the registry read back; and a page on another port of the host that tries to
forge a decision."""

from __future__ import annotations

import http.server
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Feedback, GenerationJob, Image, Source
from lora_pipeline.review.app import background_server, create_app
from lora_pipeline.review.security import BROWSER_COOKIE
from lora_pipeline_tests.review.conftest import (
    CHROMIUM,
    Studio,
    add_cast,
    make_settings,
    named_context,
)

TOKEN = "browser-test-token"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture
def live(studio: Studio) -> Iterator[str]:
    with background_server(studio.app) as url:
        yield url


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = named_context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A 409 is the designed answer to a decision taken elsewhere; Chrome logs it anyway.
    expected = "the server responded with a status of 409"
    page.on(
        "console",
        lambda m: errors.append(m.text) if m.type == "error" and expected not in m.text else None,
    )
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def status(studio: Studio, image_id: int) -> str:
    with studio.registry.session() as session:
        return session.get(Image, image_id).status


def feedback(studio: Studio, image_id: int) -> Feedback | None:
    with studio.registry.session() as session:
        return session.scalar(select(Feedback).where(Feedback.image_id == image_id))


def card(page, image_id: int):
    return page.locator(f'.card[data-image-id="{image_id}"]')


def test_approve_and_reject_by_clicking(studio: Studio, live: str, page) -> None:
    first, second = studio.add_image("aiko", 1), studio.add_image("kenji", 2)
    page.goto(f"{live}/approve?reviewer=alice")
    # The image is served by id; wait until the browser has decoded it, then check its size.
    page.wait_for_function("() => document.images.length && document.images[0].complete")
    assert page.locator("img").first.evaluate("img => img.naturalWidth") == 32
    card(page, first).get_by_role("button", name="✓ Approve").click()
    sync_api.expect(card(page, first).locator(".notice")).to_have_text(f"Image {first} approved.")
    assert status(studio, first) == "approved"

    target = card(page, second)
    target.locator("summary").click()
    target.get_by_label("Wrong style").check()
    target.get_by_label("Bad quality").check()
    target.locator("textarea[name=notes]").fill("too noisy")
    target.get_by_role("button", name="Reject", exact=True).click()
    sync_api.expect(target.locator(".notice")).to_contain_text("wrong art style, blurry")
    assert status(studio, second) == "rejected"
    rejection = feedback(studio, second)
    assert rejection.categories == ["wrong_style", "bad_quality"]
    assert (rejection.notes, rejection.reviewer) == ("too noisy", "alice")
    assert rejection.negative_terms == ["wrong art style", "blurry", "low quality"]


def test_keyboard_shortcuts(studio: Studio, live: str, page) -> None:
    ids = [studio.add_image("aiko", n) for n in range(4)]
    page.goto(f"{live}/approve")
    sync_api.expect(card(page, ids[0])).to_have_class(re.compile("current"))
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    sync_api.expect(card(page, ids[1])).to_have_class(re.compile("current"))
    page.keyboard.press("a")
    sync_api.expect(card(page, ids[1]).locator(".notice")).to_be_visible()
    # The next card is current now: reject it with categories 4 (not solo) and 6.
    sync_api.expect(card(page, ids[2])).to_have_class(re.compile("current"))
    page.keyboard.press("r")
    page.keyboard.press("a")  # ignored while the reject panel is open
    page.keyboard.press("4")
    page.keyboard.press("6")
    page.keyboard.press("Enter")
    sync_api.expect(card(page, ids[2]).locator(".notice")).to_be_visible()
    # Escape closes a reject panel without deciding.
    page.keyboard.press("r")
    page.keyboard.press("Escape")
    assert [status(studio, i) for i in ids] == ["pending", "approved", "rejected", "pending"]
    assert feedback(studio, ids[2]).categories == ["not_solo", "wrong_expression"]


def test_a_design_prompt_edit_from_the_page(studio: Studio, live: str, page) -> None:
    image_id = studio.add_image("aiko", 1)
    page.goto(f"{live}/approve")
    target = card(page, image_id)
    target.locator("summary").click()
    target.get_by_label("Wrong appearance").check()
    target.locator("textarea[name=prompt_edit]").fill("teal bob cut, yellow raincoat")
    target.get_by_role("button", name="Reject", exact=True).click()
    sync_api.expect(target.locator(".notice")).to_be_visible()
    with studio.registry.session() as session:
        assert commands.get_character(session, "aiko").design_prompt == (
            "teal bob cut, yellow raincoat"
        )


def test_a_decision_taken_elsewhere_shows_409_in_the_page(studio: Studio, live: str, page) -> None:
    image_id = studio.add_image("aiko", 1)
    page.goto(f"{live}/approve")
    with studio.registry.session() as session:
        commands.reject_image(session, image_id, ["bad_quality"], reviewer="bob")
    card(page, image_id).get_by_role("button", name="✓ Approve").click()
    error = card(page, image_id).locator(".card-error")
    sync_api.expect(error).to_have_text(f"image {image_id} was already rejected by bob")
    assert status(studio, image_id) == "rejected"


def test_the_page_works_without_javascript(studio: Studio, live: str, browser) -> None:
    image_id = studio.add_image("aiko", 1)
    context = named_context(browser, java_script_enabled=False)
    page = context.new_page()
    page.goto(f"{live}/approve")
    card(page, image_id).get_by_role("button", name="✓ Approve").click()
    page.wait_for_url(re.compile(r"done=\d+&outcome=approved"))
    assert f"Image {image_id} approved." in page.content()
    context.close()
    assert status(studio, image_id) == "approved"


def test_behind_a_token_the_browser_logs_in_once(tmp_path: Path, browser) -> None:
    settings = make_settings(tmp_path / "home")
    app = create_app(settings, access_token=TOKEN)
    studio = Studio(settings, *_registry_and_root(settings), app, None)  # type: ignore[arg-type]
    image_id = studio.add_image("aiko", 1)
    context = named_context(browser)
    page = context.new_page()
    with background_server(app) as url:
        assert page.goto(f"{url}/approve").status == 401
        page.goto(f"{url}/approve?token={TOKEN}")
        assert page.url == f"{url}/approve"
        card(page, image_id).get_by_role("button", name="✓ Approve").click()
        sync_api.expect(card(page, image_id).locator(".notice")).to_be_visible()
    context.close()
    assert status(studio, image_id) == "approved"
    studio.registry.dispose()


def _registry_and_root(settings):
    from lora_pipeline.media.store import DataRoot
    from lora_pipeline.registry.db import Registry

    registry = Registry(settings.database_url)
    add_cast(registry)
    return registry, DataRoot(settings.data_root)


def test_generate_tab_shows_settings_and_live_job_status(studio: Studio, live: str, page) -> None:
    page.goto(f"{live}/generate")
    page.select_option("#generate-character", "kenji")
    sync_api.expect(page.locator("#character-settings")).to_contain_text("cfg 7.0 · 25 steps")
    page.fill("input[name=seed]", "11")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(re.compile(r"requested=\d+"))
    row = page.locator("#jobs-body tr").first
    sync_api.expect(row.locator(".job-status")).to_have_text("pending")
    with studio.registry.session() as session:
        (job,) = session.scalars(select(GenerationJob)).all()
        commands.mark_job(session, job.id, "running")
    # The script polls /jobs.json while a job is pending or running.
    sync_api.expect(row.locator(".job-status")).to_have_text("running", timeout=10_000)


# --- a page on another port of this host tries to decide -----------------------------------------


class AttackerPage(http.server.BaseHTTPRequestHandler):
    """Serves, from another port of 127.0.0.1, a page that writes the app's browser cookie (a
    cookie does not keep ports apart) and posts the app's approve form at once."""

    cookie = ""
    form = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.form.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("set-cookie", f"{BROWSER_COOKIE}={self.cookie}; Path=/")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def attacker_site(cookie: str, form: str) -> Iterator[str]:
    handler = type("Handler", (AttackerPage,), {"cookie": cookie, "form": form})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def a_real_browser_pair(live: str) -> tuple[str, str]:
    """What any local process can get from the app: a browser id and its valid form token."""
    with urllib.request.urlopen(f"{live}/ingest") as response:
        cookie = response.headers["set-cookie"].split(";")[0].split("=", 1)[1]
        html = response.read().decode()
    return cookie, re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize("pair", ["valid pair fetched from the app", "made up"])
def test_a_page_on_another_port_cannot_approve(
    studio: Studio, live: str, browser, pair: str
) -> None:
    image_id = studio.add_image("aiko", 1)
    cookie, token = a_real_browser_pair(live) if pair.startswith("valid") else ("x" * 43, "f" * 64)
    form = (
        f'<form method="post" action="{live}/images/{image_id}/approve">'
        f'<input name="csrf_token" value="{token}"><input name="reviewer" value="attacker-page">'
        "</form><script>document.forms[0].submit()</script>"
    )
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live}/approve")  # the studio's own tab has its cookie already
    with attacker_site(cookie, form) as attacker:
        posted = f"{live}/images/{image_id}/approve"
        with page.expect_response(lambda r: r.url == posted) as answer:
            page.goto(f"{attacker}/")
        assert answer.value.status == 403
        assert "CSRF check failed: this request was sent by a page of " + attacker in (
            answer.value.text()
        )
    # The cookie was overwritten from the other port: only the Origin check stopped the post.
    jar = {c["name"]: c["value"] for c in context.cookies(live)}
    assert jar[BROWSER_COOKIE] == cookie
    assert status(studio, image_id) == "pending"
    # The studio's own page still decides, in the same browser.
    page.goto(f"{live}/approve?reviewer=alice")
    card(page, image_id).get_by_role("button", name="✓ Approve").click()
    sync_api.expect(card(page, image_id).locator(".notice")).to_have_text(
        f"Image {image_id} approved."
    )
    context.close()
    with studio.registry.session() as session:
        assert session.get(Image, image_id).reviewed_by == "alice"


def test_a_failed_ingest_is_retried_from_the_ingest_tab(studio: Studio, live: str, page) -> None:
    with studio.registry.session() as session:
        source = commands.create_source(session, "show", "url", "https://example.com/v", "aiko")
        commands.set_source_state(session, source.id, "failed", error="no data for 20 s")
        source_id = source.id
    page.goto(f"{live}/ingest")
    row = page.locator("tr", has_text="https://example.com/v")
    sync_api.expect(row).to_contain_text("failed: no data for 20 s")
    row.get_by_role("button", name=f"Retry ingest {source_id}").click()
    page.wait_for_url(f"{live}/ingest?retried={source_id}")
    sync_api.expect(page.locator(".notice")).to_contain_text(f"Ingest request {source_id} queued")
    sync_api.expect(page.locator("tr", has_text="https://example.com/v")).to_contain_text("pending")
    assert page.get_by_role("button", name=f"Retry ingest {source_id}").count() == 0
    with studio.registry.session() as session:
        retried = session.get(Source, source_id)
        assert (retried.state, retried.error) == ("pending", None)
