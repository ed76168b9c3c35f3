"""Bounded decoding in the review app: thumbnails made once and kept under the data root's
thumbs/, and the pixel budget that every full decode (uploads, thumbnails) waits for."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from lora_pipeline.registry import commands
from lora_pipeline.registry.models import Source
from lora_pipeline.review import decoding
from lora_pipeline.review.decoding import THUMB_SIDE, PixelBudget, Thumbnails, header_pixels
from lora_pipeline_tests.review.conftest import Studio

JSON = {"accept": "application/json"}


def upload(studio: Studio, size: tuple[int, int]) -> int:
    """An image uploaded on the Ingest page, then registered as ingest registers it."""
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 40, 90)).save(buffer, format="PNG")
    response = studio.client.post(
        "/ingest",
        data={"csrf_token": studio.csrf(), "mode": "single", "character": "aiko"},
        files={"file": ("big.png", buffer.getvalue(), "image/png")},
        headers=JSON,
    )
    assert response.status_code == 200, response.text
    with studio.registry.session() as session:
        (source,) = session.scalars(select(Source)).all()
        stored = studio.root.path(source.uri)
        sha256 = hashlib.sha256(stored.read_bytes()).hexdigest()
        character = commands.get_character(session, "aiko")
        image, _ = commands.add_image(
            session, character.id, sha256, source.uri, size[0], size[1], "frame"
        )
        return image.id


def thumbs(studio: Studio) -> list[Path]:
    folder = studio.root.path("thumbs")
    return sorted(folder.rglob("*.jpg")) if folder.exists() else []


def test_a_large_upload_is_served_as_a_thumbnail_made_once(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id = upload(studio, (4000, 3000))
    response = studio.client.get(f"/images/{image_id}/thumb")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert "immutable" in response.headers["cache-control"]
    with PILImage.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.size == (THUMB_SIDE, 768)  # the long side, the aspect kept
    (cached,) = thumbs(studio)
    assert cached.is_relative_to(studio.settings.data_root / "thumbs")
    assert cached.read_bytes() == response.content
    # Served from disk from then on: no second decode.
    monkeypatch.setattr(decoding, "load_image", pytest.fail)
    again = studio.client.get(f"/images/{image_id}/thumb")
    assert again.status_code == 200 and again.content == response.content
    # The full image is still there at its own address.
    with PILImage.open(io.BytesIO(studio.client.get(f"/images/{image_id}").content)) as full:
        assert full.size == (4000, 3000)


def test_a_small_image_is_not_enlarged(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    response = studio.client.get(f"/images/{image_id}/thumb")
    with PILImage.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.size == (32, 24)


def test_the_approve_and_gallery_pages_show_thumbnails(studio: Studio) -> None:
    image_id = studio.add_image("aiko", 1)
    for page in ("/approve", "/gallery"):
        assert f'src="/images/{image_id}/thumb"' in studio.client.get(page).text, page


def test_a_thumbnail_of_no_image_is_404(studio: Studio) -> None:
    response = studio.client.get("/images/999/thumb", headers=JSON)
    assert response.status_code == 404 and response.json()["error"] == "no image 999"
    assert thumbs(studio) == []


def test_a_burst_of_requests_for_one_thumbnail_decodes_once(
    studio: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_id = studio.add_image("aiko", 7)
    source = studio.root.path(thumbs_source(studio, image_id))
    loads: list[Path] = []
    real_load = decoding.load_image

    def counted(path: Path, **kwargs: object) -> PILImage.Image:
        loads.append(path)
        return real_load(path, **kwargs)

    monkeypatch.setattr(decoding, "load_image", counted)
    maker = Thumbnails(studio.root, PixelBudget(1_000_000))
    start = threading.Barrier(8)
    made: list[Path] = []

    def request() -> None:
        start.wait()
        made.append(maker.path(source, "d" * 64))

    run_all([threading.Thread(target=request) for _ in range(8)])
    assert len(made) == 8 and len(set(made)) == 1 and made[0].is_file()
    assert len(loads) == 1


def thumbs_source(studio: Studio, image_id: int) -> str:
    with studio.registry.session() as session:
        return commands.get_image(session, image_id).path


def run_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- the pixel budget --------------------------------------------------------------------------


class RecordingBudget(PixelBudget):
    """A PixelBudget that records how many pixels were being decoded at once, at most."""

    def __init__(self, pixels: int) -> None:
        super().__init__(pixels)
        self.now = 0
        self.peak = 0
        self.alone_when_oversized = True
        self._lock = threading.Lock()

    @contextmanager
    def decoding(self, pixels: int) -> Iterator[None]:
        with super().decoding(pixels):
            counted = min(pixels, self.pixels)
            with self._lock:
                if pixels > self.pixels and self.now:
                    self.alone_when_oversized = False
                self.now += counted
                self.peak = max(self.peak, self.now)
            try:
                yield
            finally:
                with self._lock:
                    self.now -= counted


def test_a_burst_of_decodes_never_exceeds_the_budget() -> None:
    budget = RecordingBudget(10_000_000)
    sizes = [4_000_000, 3_000_000, 6_000_000, 2_500_000, 10_000_000, 1_000_000, 50_000_000] * 4
    start = threading.Barrier(len(sizes))
    finished: list[int] = []

    def decode(pixels: int) -> None:
        start.wait()  # all at once, as a burst of uploads would arrive
        with budget.decoding(pixels):
            # Real work while holding a share: lets the others try to get in meanwhile.
            hashlib.sha256(b"x" * 200_000).digest()
        finished.append(pixels)

    run_all([threading.Thread(target=decode, args=(n,)) for n in sizes])
    assert sorted(finished) == sorted(sizes)
    assert 0 < budget.peak <= budget.pixels
    assert budget.alone_when_oversized  # an image over the budget runs, but alone
    assert budget.now == 0 and budget._in_use == 0


def test_two_decodes_within_the_budget_run_at_once() -> None:
    budget = PixelBudget(10_000_000)
    inside = threading.Event()

    def second() -> None:
        with budget.decoding(4_000_000):
            inside.set()

    with budget.decoding(4_000_000):
        thread = threading.Thread(target=second)
        thread.start()
        # Not a timing check: the wait only bounds how long a broken budget hangs the test.
        assert inside.wait(timeout=60), "a decode within the budget waited for another"
    thread.join()


def test_thumbnails_of_many_large_images_share_the_budget(studio: Studio) -> None:
    budget = RecordingBudget(7_000_000)
    maker = Thumbnails(studio.root, budget)
    sources = []
    for n in range(6):
        stored = studio.root.put_image(PILImage.new("RGB", (2000, 1500), (n * 40, 10, 10)))
        sources.append((studio.root.path(stored.relpath), stored.sha256))
    start = threading.Barrier(len(sources))
    made: list[Path] = []

    def thumbnail(path: Path, sha256: str) -> None:
        start.wait()
        made.append(maker.path(path, sha256))

    run_all([threading.Thread(target=thumbnail, args=source) for source in sources])
    assert len(set(made)) == 6 and all(path.is_file() for path in made)
    assert 3_000_000 <= budget.peak <= 7_000_000


def test_header_pixels_reads_the_size_without_decoding(tmp_path: Path) -> None:
    picture = tmp_path / "p.png"
    PILImage.new("RGB", (300, 200)).save(picture)
    assert header_pixels(picture) == 60_000
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\0" * 100)
    assert header_pixels(tmp_path / "clip.mp4") is None


def test_parallel_uploads_of_large_images_wait_for_the_budget(studio: Studio) -> None:
    budget = RecordingBudget(7_000_000)  # room for two 2000x1500 decodes, not three
    studio.app.state.review.decode_budget = budget
    token = studio.csrf()
    pictures = []
    for n in range(6):
        buffer = io.BytesIO()
        PILImage.new("RGB", (2000, 1500), (n * 40, 90, 10)).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    start = threading.Barrier(len(pictures))
    answers: list[int] = []

    def send(picture: bytes) -> None:
        start.wait()
        response = studio.client.post(
            "/ingest",
            data={"csrf_token": token, "mode": "single", "character": "aiko"},
            files={"file": ("big.png", picture, "image/png")},
            headers=JSON,
        )
        answers.append(response.status_code)

    run_all([threading.Thread(target=send, args=(picture,)) for picture in pictures])
    assert answers == [200] * 6
    assert 3_000_000 <= budget.peak <= 7_000_000
    with studio.registry.session() as session:
        assert len(session.scalars(select(Source)).all()) == 6
