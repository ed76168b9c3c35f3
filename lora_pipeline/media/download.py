"""Download one video with yt-dlp's Python API into `<dest>/<extractor>/<id>.<ext>`.

A video is identified by yt-dlp's (extractor, id), so the same video reached through two URLs is
downloaded once. A small per-URL index lets a repeated URL skip even the metadata request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yt_dlp
from yt_dlp.utils import DownloadError, YoutubeDLError

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_write_text

# yt-dlp's own temporary names next to the finished file.
_PARTIAL_SUFFIXES = (".part", ".ytdl", ".temp", ".tmp", ".json")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_URL_INDEX_DIR = ".url-index"
_SOCKET_TIMEOUT_S = 20
_RETRIES = 2

# (pattern in yt-dlp's message, human reason); the first match wins.
_REASONS: tuple[tuple[str, str], ...] = (
    (r"unsupported url", "not a video page (no video found at this URL)"),
    (r"private video|is private|login required|sign in to view", "the video is private"),
    (r"sign in to confirm your age|age[- ]restricted", "the video is age-restricted"),
    (
        r"available in your country|geo[- ]?restrict|geo[- ]?block|from your location",
        "the video is geo-blocked here",
    ),
    (
        r"has been removed|video unavailable|no longer available|account .*terminated|"
        r"does not exist|has been deleted|copyright",
        "the video was removed or is unavailable",
    ),
    (r"http error 404|404: not found", "not found (HTTP 404)"),
    (r"http error 403|forbidden", "access denied (HTTP 403)"),
    (r"http error (\d{3})", "the server answered HTTP {0}"),
    (r"live event will begin|is a live|live stream", "live streams cannot be downloaded"),
    (r"requested format is not available|no video formats", "no downloadable video format"),
    (
        r"timed out|connection refused|name or service not known|nodename nor servname|"
        r"temporary failure in name resolution|network is unreachable|unable to download webpage|"
        r"urlopen error|connection reset|remote end closed",
        "the site is unreachable",
    ),
)


class DownloadFailed(PipelineError, RuntimeError):
    """A video could not be downloaded; the message is one line meant for people."""


@dataclass
class DownloadedVideo:
    path: Path
    video_id: str
    extractor: str
    title: str
    url: str
    cached: bool


def clean_message(message: str) -> str:
    """yt-dlp's error text as one plain line: no colours, no 'ERROR:' or '[site] id:' tags."""
    text = _ANSI.sub("", message)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    while True:
        stripped = re.sub(r"^(ERROR|WARNING):\s*", "", line)
        stripped = re.sub(r"^\[[\w:.-]+\]\s*(?:[\w.-]+:\s+)?", "", stripped)
        if stripped == line:
            break
        line = stripped
    return " ".join(line.split())


def human_reason(message: str) -> str:
    """The short reason for a yt-dlp failure: private, removed, geo-blocked, unreachable, ..."""
    cleaned = clean_message(message)
    lowered = cleaned.lower()
    for pattern, reason in _REASONS:
        match = re.search(pattern, lowered)
        if match:
            return reason.format(*match.groups())
    return cleaned or "unknown yt-dlp error"


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DownloadFailed(f"not a valid URL: {url!r}") from exc
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise DownloadFailed(f"only http(s) URLs can be downloaded, not {url[:80]!r}")


class _QuietLogger:
    """Keeps yt-dlp off stdout/stderr; errors reach us as exceptions anyway."""

    def debug(self, message: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass


def _format_rate(bytes_per_s: float | None) -> str:
    if not bytes_per_s:
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if bytes_per_s < 1024 or unit == "GiB":
            return f" at {bytes_per_s:.1f} {unit}/s"
        bytes_per_s /= 1024
    return ""


def _progress_hook(progress: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """Report every 10 % (or every 10 MiB when the size is unknown), so logs stay short."""
    last_step = -1

    def hook(status: dict[str, Any]) -> None:
        nonlocal last_step
        if status.get("status") == "finished":
            progress("download finished")
            return
        if status.get("status") != "downloading":
            return
        done = status.get("downloaded_bytes") or 0
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        step = int(done * 10 / total) if total else int(done // (10 * 1024 * 1024))
        if step == last_step:
            return
        last_step = step
        rate = _format_rate(status.get("speed"))
        if total:
            progress(f"{min(done / total, 1.0) * 100:.0f}%{rate}")
        else:
            progress(f"{done / (1024 * 1024):.0f} MiB{rate}")

    return hook


def _options(
    dest_dir: Path, max_height: int, progress: Callable[[str], None] | None
) -> dict[str, Any]:
    height = int(max_height)
    return {
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _QuietLogger(),
        "color": "no_color",
        "noplaylist": True,
        # A channel or playlist URL is refused; do not list its entries to find that out.
        "extract_flat": "in_playlist",
        "playlist_items": "1",
        # The best format up to max_height; a site that has none that small gives its
        # smallest, never a 4K file we would only shrink.
        "format": f"bv*[height<={height}]/b[height<={height}]/wv*/w",
        "outtmpl": {"default": "%(extractor)s/%(id)s.%(ext)s"},
        "paths": {"home": str(dest_dir)},
        "restrictfilenames": True,
        "windowsfilenames": True,
        "overwrites": False,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "retries": _RETRIES,
        "fragment_retries": _RETRIES,
        "extractor_retries": 1,
        "file_access_retries": 1,
        "progress_hooks": [_progress_hook(progress)] if progress else [],
    }


def _inside(dest_dir: Path, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(dest_dir):
        raise DownloadFailed(f"yt-dlp chose a file outside {dest_dir}: {path}")
    return resolved


def _existing_file(expected: Path) -> Path | None:
    """The finished file for this video id, whatever extension an earlier run got."""
    if expected.is_file() and expected.stat().st_size > 0:
        return expected
    if not expected.parent.is_dir():
        return None
    for candidate in sorted(expected.parent.glob(f"{_glob_escape(expected.stem)}.*")):
        if candidate.suffix in _PARTIAL_SUFFIXES or not candidate.is_file():
            continue
        if candidate.stem == expected.stem and candidate.stat().st_size > 0:
            return candidate
    return None


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _index_path(dest_dir: Path, url: str) -> Path:
    return dest_dir / _URL_INDEX_DIR / f"{hashlib.sha256(url.encode()).hexdigest()}.json"


def _from_index(dest_dir: Path, url: str) -> DownloadedVideo | None:
    index = _index_path(dest_dir, url)
    try:
        entry = json.loads(index.read_text())
        path = _inside(dest_dir, dest_dir / entry["path"])
    except (OSError, ValueError, KeyError, TypeError, DownloadFailed):
        return None
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return DownloadedVideo(
        path=path,
        video_id=str(entry["video_id"]),
        extractor=str(entry["extractor"]),
        title=str(entry["title"]),
        url=url,
        cached=True,
    )


def _remember(dest_dir: Path, video: DownloadedVideo) -> None:
    entry = {
        "path": video.path.relative_to(dest_dir).as_posix(),
        "video_id": video.video_id,
        "extractor": video.extractor,
        "title": video.title,
        "url": video.url,
    }
    atomic_write_text(_index_path(dest_dir, video.url), json.dumps(entry))


def _single_video(info: dict[str, Any] | None, url: str) -> dict[str, Any]:
    if not info:
        raise DownloadFailed(f"cannot download {url}: no video found")
    if info.get("_type") in ("playlist", "multi_video") or "entries" in info:
        raise DownloadFailed(f"cannot download {url}: it is a playlist or channel, not one video")
    if info.get("is_live"):
        raise DownloadFailed(f"cannot download {url}: live streams cannot be downloaded")
    if not info.get("id") or not info.get("extractor"):
        raise DownloadFailed(f"cannot download {url}: yt-dlp found no video id")
    return info


def _downloaded_path(ydl: yt_dlp.YoutubeDL, info: dict[str, Any], dest_dir: Path) -> Path:
    for item in info.get("requested_downloads") or []:
        filepath = item.get("filepath")
        if filepath and Path(filepath).is_file():
            return _inside(dest_dir, Path(filepath))
    found = _existing_file(_inside(dest_dir, Path(ydl.prepare_filename(info))))
    if found is None:
        raise DownloadFailed(f"yt-dlp finished but no file for {info.get('id')} is in {dest_dir}")
    return found


def download_video(
    url: str,
    dest_dir: Path,
    progress: Callable[[str], None] | None = None,
    max_height: int = 1080,
) -> DownloadedVideo:
    """Download one video (at most max_height pixels tall) or return the copy already there.

    Raises DownloadFailed with a one-line reason: private, removed, geo-blocked, not a video,
    unreachable or an unsupported URL.
    """
    url = url.strip()
    _check_url(url)
    if max_height < 1:
        raise ValueError(f"max_height must be positive, got {max_height}")
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest_dir = dest_dir.resolve()
    remembered = _from_index(dest_dir, url)
    if remembered is not None:
        return remembered
    try:
        with yt_dlp.YoutubeDL(_options(dest_dir, max_height, progress)) as ydl:
            info = _single_video(ydl.extract_info(url, download=False), url)
            expected = _inside(dest_dir, Path(ydl.prepare_filename(info)))
            existing = _existing_file(expected)
            cached = existing is not None
            if existing is None:
                info = ydl.process_ie_result(info, download=True)
                existing = _downloaded_path(ydl, info, dest_dir)
    except (DownloadError, YoutubeDLError) as exc:
        raise DownloadFailed(f"cannot download {url}: {human_reason(str(exc))}") from exc
    except OSError as exc:
        raise DownloadFailed(f"cannot download {url}: {exc.strerror or exc}") from exc
    video = DownloadedVideo(
        path=existing,
        video_id=str(info["id"]),
        extractor=str(info["extractor"]),
        title=str(info.get("title") or info["id"]),
        url=url,
        cached=cached,
    )
    _remember(dest_dir, video)
    return video
