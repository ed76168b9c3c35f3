"""Downloads under faults, against servers on 127.0.0.1: two URLs with one file name, a broken
download fixed later, a stalled transfer, a redirect to a local file, a password in the URL."""

from __future__ import annotations

import http.server
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lora_pipeline.media.download import DownloadFailed, download_video
from lora_pipeline.media.store import sha256_file
from lora_pipeline.media.video import make_synthetic_video
from lora_pipeline_tests.media.conftest import LocalServer, serving

Respond = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextmanager
def scripted_server(respond: Respond) -> Iterator[str]:
    """A server on 127.0.0.1 whose every GET is answered by `respond`; yields its base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            respond(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda *args: None  # type: ignore[method-assign]
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


def test_two_urls_with_one_file_name_are_two_videos(
    tmp_path: Path, http_server: LocalServer
) -> None:
    for folder, scenes in (("a", 2), ("b", 3)):
        (http_server.root / folder).mkdir()
        make_synthetic_video(http_server.root / folder / "clip.mp4", 1.0, 64, 48, scenes=scenes)
    first = download_video(http_server.url("a/clip.mp4"), tmp_path / "dl")
    second = download_video(http_server.url("b/clip.mp4"), tmp_path / "dl")
    assert not second.cached and first.path != second.path
    assert sha256_file(first.path) == sha256_file(http_server.root / "a" / "clip.mp4")
    assert sha256_file(second.path) == sha256_file(http_server.root / "b" / "clip.mp4")
    # Each URL is its own cache entry: asking again gives each one's own file.
    again = download_video(http_server.url("b/clip.mp4"), tmp_path / "dl")
    assert again.cached and again.path == second.path


def test_a_broken_download_is_not_cached_and_works_once_fixed(
    tmp_path: Path, http_server: LocalServer, synthetic_video: Path
) -> None:
    good = synthetic_video.read_bytes()
    served = http_server.root / "clip.mp4"
    served.write_bytes(good[: len(good) // 2])  # the server sends a cut file
    with pytest.raises(DownloadFailed, match="no usable video") as error:
        download_video(http_server.url("clip.mp4"), tmp_path / "dl")
    assert "\n" not in str(error.value)
    assert [p for p in (tmp_path / "dl").rglob("*") if p.is_file()] == []
    served.write_bytes(good)  # the server is fixed
    video = download_video(http_server.url("clip.mp4"), tmp_path / "dl")
    assert not video.cached and sha256_file(video.path) == sha256_file(synthetic_video)


def _trickle_then_stall(handler: http.server.BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "video/mp4")
    handler.send_header("Content-Length", str(10_000_000))
    handler.end_headers()
    for _ in range(3):
        handler.wfile.write(b"\x00" * 100)
        handler.wfile.flush()
        time.sleep(0.1)
    time.sleep(30)


def test_a_stalled_transfer_fails_quickly_with_no_data(tmp_path: Path) -> None:
    with scripted_server(_trickle_then_stall) as base:
        started = time.monotonic()
        with pytest.raises(DownloadFailed, match=r"no data for 1.5 s"):
            download_video(f"{base}/clip.mp4", tmp_path / "dl", stall_s=1.5)
        elapsed = time.monotonic() - started
    print(f"stalled transfer failed after {elapsed:.1f} s")
    assert elapsed < 1.5 + 2.0  # the configured time, and reconnecting
    assert [p for p in (tmp_path / "dl").rglob("*") if p.is_file()] == []


def test_a_redirect_to_a_local_file_is_refused(tmp_path: Path, synthetic_video: Path) -> None:
    def redirect(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", f"file://{synthetic_video}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with scripted_server(redirect) as base, pytest.raises(DownloadFailed) as error:
        download_video(f"{base}/clip.mp4", tmp_path / "dl")
    assert str(error.value).endswith("it redirects away from http(s), which is never followed")
    assert [p for p in (tmp_path / "dl").rglob("*") if p.is_file()] == []


def test_a_password_in_the_url_is_never_shown(tmp_path: Path, http_server: LocalServer) -> None:
    url = http_server.url("gone.mp4").replace("http://", "http://me:hunter2@")
    with pytest.raises(DownloadFailed) as error:
        download_video(url, tmp_path / "dl")
    assert "hunter2" not in str(error.value) and "me:" not in str(error.value)
    assert "not found (HTTP 404)" in str(error.value)


def test_the_scheme_is_case_insensitive(tmp_path: Path, http_server: LocalServer) -> None:
    video = download_video(http_server.url("clip.mp4").replace("http://", "HTTP://"), tmp_path)
    assert video.video_id == "clip" and not video.cached


@pytest.mark.parametrize("url", ["FILE:///etc/passwd", "File:/etc/passwd", "./clip.mp4"])
def test_local_paths_in_any_case_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadFailed, match="only http"):
        download_video(url, tmp_path / "dl")


def test_a_served_playlist_naming_a_local_file_reads_nothing(
    tmp_path: Path, synthetic_video: Path
) -> None:
    playlist = (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:4.0,\nfile://{synthetic_video}\n#EXT-X-ENDLIST\n"
    ).encode()

    def serve(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.apple.mpegurl")
        handler.send_header("Content-Length", str(len(playlist)))
        handler.end_headers()
        handler.wfile.write(playlist)

    with scripted_server(serve) as base, pytest.raises(DownloadFailed) as error:
        download_video(f"{base}/clip.m3u8", tmp_path / "dl")
    assert str(error.value).endswith("it points at a local file (file:), which is never read")
    assert [p for p in (tmp_path / "dl").rglob("*") if p.is_file()] == []
