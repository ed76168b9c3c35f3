from __future__ import annotations

from pathlib import Path

import pytest

from lora_pipeline.media.download import (
    DownloadFailed,
    cache_key,
    clean_message,
    download_video,
    human_reason,
    normalise_url,
    redact,
)
from lora_pipeline.media.store import sha256_file
from lora_pipeline_tests.media.conftest import LocalServer


def test_direct_link_through_generic_extractor(tmp_path: Path, http_server: LocalServer) -> None:
    lines: list[str] = []
    url = http_server.url("clip.mp4")
    video = download_video(url, tmp_path / "downloads", progress=lines.append)
    assert (video.extractor, video.video_id, video.title) == ("generic", "clip", "clip")
    assert video.url == url and not video.cached
    key = cache_key(url, 1080)
    assert video.path == (tmp_path / "downloads" / key[:2] / key / "clip.mp4").resolve()
    assert sha256_file(video.path) == sha256_file(http_server.root / "clip.mp4")
    assert lines and lines[-1] == "download finished"
    assert any(line.startswith("100%") for line in lines)
    assert all(len(line) < 40 and "\n" not in line for line in lines)
    leftovers = [p.name for p in video.path.parent.iterdir() if p != video.path]
    assert leftovers == ["info.json"]
    assert not list((tmp_path / "downloads").rglob("*.tmp"))


def test_second_call_is_cached_without_requests(tmp_path: Path, http_server: LocalServer) -> None:
    url = http_server.url("clip.mp4")
    first = download_video(url, tmp_path / "dl")
    requests_after_first = len(http_server.requests)
    assert requests_after_first >= 1
    mtime = first.path.stat().st_mtime_ns
    second = download_video(url, tmp_path / "dl")
    assert second.cached and second.path == first.path
    assert (second.video_id, second.extractor) == (first.video_id, first.extractor)
    assert len(http_server.requests) == requests_after_first
    assert first.path.stat().st_mtime_ns == mtime


def test_a_leftover_scratch_folder_is_not_mistaken_for_cache(
    tmp_path: Path, http_server: LocalServer
) -> None:
    url = http_server.url("clip.mp4")
    key = cache_key(url, 1080)
    scratch = tmp_path / "dl" / key[:2] / f".{key}.abc.tmp"
    scratch.mkdir(parents=True)
    (scratch / "clip.mp4.part").write_bytes(b"\x00" * 10)
    video = download_video(url, tmp_path / "dl")
    assert not video.cached
    assert sha256_file(video.path) == sha256_file(http_server.root / "clip.mp4")


def test_the_cache_key_is_the_whole_url_without_credentials() -> None:
    assert normalise_url("HTTP://User:Secret@Example.COM:80/a/clip.mp4?x=1#t=3") == (
        "http://example.com/a/clip.mp4?x=1"
    )
    assert cache_key("http://example.com/a/clip.mp4", 1080) != cache_key(
        "http://example.com/b/clip.mp4", 1080
    )
    assert cache_key("http://example.com/a.mp4", 1080) != cache_key("http://example.com/a.mp4", 720)
    assert cache_key("http://u:p@example.com/a.mp4", 720) == cache_key(
        "http://example.com/a.mp4", 720
    )
    assert redact("cannot download https://me:hunter2@host/v: 403") == (
        "cannot download https://host/v: 403"
    )


def _failure(url: str, dest: Path) -> str:
    with pytest.raises(DownloadFailed) as error:
        download_video(url, dest)
    message = str(error.value)
    assert "\n" not in message and "ERROR" not in message and "\x1b" not in message
    return message


def test_missing_file_is_a_404(tmp_path: Path, http_server: LocalServer) -> None:
    message = _failure(http_server.url("gone.mp4"), tmp_path / "dl")
    assert "not found (HTTP 404)" in message


def test_html_page_without_video(tmp_path: Path, http_server: LocalServer) -> None:
    message = _failure(http_server.url("page.html"), tmp_path / "dl")
    assert "not a video page" in message
    assert not list((tmp_path / "dl").rglob("*.html"))


def test_unreachable_host(tmp_path: Path) -> None:
    # Port 1 on loopback refuses connections immediately.
    assert "unreachable" in _failure("http://127.0.0.1:1/clip.mp4", tmp_path / "dl")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "javascript:alert(1)", "ftp://example.com/a.mp4", "/etc/hosts", ""],
)
def test_only_http_urls(tmp_path: Path, http_server: LocalServer, url: str) -> None:
    assert "only http(s) URLs" in _failure(url, tmp_path / "dl")
    assert http_server.requests == []
    assert not (tmp_path / "dl").exists()


def test_messages_are_cleaned() -> None:
    raw = (
        "\x1b[0;31mERROR:\x1b[0m [youtube] abc123: "
        "Private video. Sign in if you've been granted access\nmore"
    )
    assert clean_message(raw) == "Private video. Sign in if you've been granted access"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("ERROR: [youtube] x: Private video. Sign in if you've been granted access", "private"),
        (
            "ERROR: [youtube] x: Video unavailable. This video has been removed by the uploader",
            "removed",
        ),
        (
            "ERROR: [youtube] x: The uploader has not made this video available in your country",
            "geo-blocked",
        ),
        ("ERROR: Unsupported URL: https://example.com/", "not a video page"),
        (
            "ERROR: [generic] x: Unable to download webpage: <urlopen error timed out>",
            "no data for 20 s",
        ),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 500: Oops", "HTTP 500"),
        ("ERROR: [vimeo] 1: something new went wrong", "something new went wrong"),
        ("ERROR: unable to write data: [Errno 28] No space left on device", "the disk is full"),
    ],
)
def test_human_reasons(message: str, reason: str) -> None:
    assert reason in human_reason(message)
