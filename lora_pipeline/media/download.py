"""Download one video with yt-dlp's Python API into a cache folder of its own per request.

The cache is keyed by what was asked: the whole URL (normalised: scheme and host lower case,
default port, fragment and credentials dropped) and the format choice. Two URLs that end in the
same file name are two entries, never one file. A download lands in a scratch folder, is read
whole by ffmpeg (`verify_video`) and only then renamed into the cache in one step, so a broken
download is never cached and the next attempt (after the server is fixed) starts afresh.
Only http(s) URLs are given to yt-dlp; it opens no `file:` URL, and a redirect elsewhere fails.
User names and passwords never appear in a message, a log line or the cache index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yt_dlp
from yt_dlp.utils import DownloadError, YoutubeDLError

from lora_pipeline.errors import PipelineError, disk_message
from lora_pipeline.files import atomic_folder
from lora_pipeline.media.video import VideoError, verify_video

# yt-dlp's own temporary names next to the finished file.
_PARTIAL_SUFFIXES = (".part", ".ytdl", ".temp", ".tmp", ".json")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_INFO_FILE = "info.json"
# How long a transfer may go without a byte before it fails (Settings.download_stall_s).
DEFAULT_STALL_S = 20.0
_RETRIES = 2
# Scratch folders of downloads a crash interrupted are removed after this long.
_SCRATCH_MAX_AGE_S = 24 * 3600.0
_DEFAULT_PORTS = {"http": 80, "https": 443}

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
    (
        r"no connection adapters were found|redirection to url .* is not allowed",
        "it redirects away from http(s), which is never followed",
    ),
    (r"file:// urls are disabled", "it points at a local file (file:), which is never read"),
    (r"no space left on device|errno 28\b", "the disk is full (free some space and try again)"),
    (r"timed out|did not get any data blocks", "no data for {stall} s"),
    (r"live event will begin|is a live|live stream", "live streams cannot be downloaded"),
    (r"requested format is not available|no video formats", "no downloadable video format"),
    (
        r"connection refused|name or service not known|nodename nor servname|"
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
    # yt-dlp may put a carriage return after its 'ERROR:' tag: the first line with words wins.
    for part in text.splitlines():
        line = _untagged(part.strip())
        if line:
            return " ".join(line.split())
    return ""


def _untagged(line: str) -> str:
    while True:
        stripped = re.sub(r"^(ERROR|WARNING):\s*", "", line)
        stripped = re.sub(r"^\[[\w:.-]+\]\s*(?:[\w.-]+:\s+)?", "", stripped)
        if stripped == line:
            return line
        line = stripped


def human_reason(message: str, stall_s: float = DEFAULT_STALL_S) -> str:
    """The short reason for a yt-dlp failure: private, removed, geo-blocked, unreachable, ..."""
    cleaned = clean_message(message)
    lowered = cleaned.lower()
    for pattern, reason in _REASONS:
        match = re.search(pattern, lowered)
        if match:
            return reason.format(*match.groups(), stall=f"{stall_s:g}")
    return cleaned or "unknown yt-dlp error"


def normalise_url(url: str) -> str:
    """The URL as the cache knows it: http(s) only, scheme and host in lower case, no default
    port, no fragment, no user name or password. DownloadFailed for anything else."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or ""), parts.port
    except ValueError as exc:
        raise DownloadFailed(f"not a valid URL: {redact(url)[:80]!r}") from exc
    if scheme not in _DEFAULT_PORTS or not host:
        raise DownloadFailed(f"only http(s) URLs can be downloaded, not {redact(url)[:80]!r}")
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _lower_scheme(url: str) -> str:
    """The URL as given (credentials kept for the site), with its scheme in lower case, so
    yt-dlp takes `HTTP://...` for the web address it is."""
    parts = urlsplit(url.strip())
    return urlunsplit(parts._replace(scheme=parts.scheme.lower()))


def redact(text: str) -> str:
    """`text` with the user name and password of every URL in it left out."""
    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]*@", r"\1", text)


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


def format_choice(max_height: int) -> str:
    """yt-dlp's format: the best up to max_height; a site that has none that small gives its
    smallest, never a 4K file we would only shrink."""
    height = int(max_height)
    return f"bv*[height<={height}]/b[height<={height}]/wv*/w"


def _options(
    scratch: Path, max_height: int, stall_s: float, progress: Callable[[str], None] | None
) -> dict[str, Any]:
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
        "format": format_choice(max_height),
        "outtmpl": {"default": "%(id)s.%(ext)s"},
        "paths": {"home": str(scratch)},
        # Never a local file (also not through a redirect or a page naming one), and no
        # external program (ffmpeg would follow whatever a manifest names).
        "enable_file_urls": False,
        "external_downloader": {"default": "native"},
        "hls_prefer_native": True,
        "restrictfilenames": True,
        "windowsfilenames": True,
        "overwrites": False,
        # Each try waits its share of stall_s for data, so a stalled server fails the whole
        # download within stall_s (plus reconnecting), never minutes later.
        "socket_timeout": stall_s / (_RETRIES + 1),
        "retries": _RETRIES,
        "fragment_retries": _RETRIES,
        "extractor_retries": 1,
        "file_access_retries": 1,
        "progress_hooks": [_progress_hook(progress)] if progress else [],
    }


def _inside(folder: Path, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        raise DownloadFailed(f"yt-dlp chose a file outside {folder}: {path.name}")
    return resolved


def cache_key(url: str, max_height: int) -> str:
    """The cache entry of a request: the normalised URL and the format choice."""
    text = normalise_url(url) + "\n" + format_choice(max_height)
    return hashlib.sha256(text.encode()).hexdigest()


def _entry_dir(dest_dir: Path, key: str) -> Path:
    return dest_dir / key[:2] / key


def _from_cache(entry: Path, url: str) -> DownloadedVideo | None:
    """The verified download of this entry, or None (absent, or damaged since)."""
    try:
        info = json.loads((entry / _INFO_FILE).read_text())
        path = _inside(entry, entry / str(info["file"]))
        if not path.is_file() or path.stat().st_size == 0:
            return None
        return DownloadedVideo(
            path=path,
            video_id=str(info["video_id"]),
            extractor=str(info["extractor"]),
            title=str(info["title"]),
            url=url,
            cached=True,
        )
    except (OSError, ValueError, KeyError, TypeError, DownloadFailed):
        return None


def _single_video(info: dict[str, Any] | None, url: str) -> dict[str, Any]:
    url = redact(url)
    if not info:
        raise DownloadFailed(f"cannot download {url}: no video found")
    if info.get("_type") in ("playlist", "multi_video") or "entries" in info:
        raise DownloadFailed(f"cannot download {url}: it is a playlist or channel, not one video")
    if info.get("is_live"):
        raise DownloadFailed(f"cannot download {url}: live streams cannot be downloaded")
    if not info.get("id") or not info.get("extractor"):
        raise DownloadFailed(f"cannot download {url}: yt-dlp found no video id")
    return info


def _downloaded_path(info: dict[str, Any], scratch: Path) -> Path:
    for item in info.get("requested_downloads") or []:
        filepath = item.get("filepath")
        if filepath and Path(filepath).is_file():
            return _inside(scratch, Path(filepath))
    found = [p for p in scratch.iterdir() if p.is_file() and p.suffix not in _PARTIAL_SUFFIXES]
    if len(found) != 1:
        raise DownloadFailed("yt-dlp finished but left no single video file")
    return found[0]


def _fetch(
    url: str,
    scratch: Path,
    max_height: int,
    stall_s: float,
    progress: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Download into `scratch`; the video's info with its file as `_file`."""
    with yt_dlp.YoutubeDL(_options(scratch, max_height, stall_s, progress)) as ydl:
        info = _single_video(ydl.extract_info(url, download=False), url)
        info = ydl.process_ie_result(info, download=True)
        path = _downloaded_path(info, scratch)
    for leftover in scratch.iterdir():
        if leftover != path:
            with contextlib.suppress(OSError):
                leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    return {**info, "_file": path}


def _verify(path: Path, shown: str) -> None:
    """A download is cached only when ffmpeg reads it whole."""
    try:
        verify_video(path)
    except VideoError as exc:
        reason = str(exc).removeprefix(f"{path.name}: ")
        raise DownloadFailed(
            f"cannot download {shown}: the download is no usable video ({reason})"
        ) from exc


def sweep_scratch(dest_dir: Path, max_age_s: float = _SCRATCH_MAX_AGE_S) -> None:
    """Remove the scratch folders of downloads a crash or kill interrupted."""
    cutoff = time.time() - max_age_s
    for scratch in Path(dest_dir).glob("*/.*.tmp"):
        with contextlib.suppress(OSError):
            if scratch.is_dir() and scratch.stat().st_mtime < cutoff:
                shutil.rmtree(scratch, ignore_errors=True)


def download_video(
    url: str,
    dest_dir: Path,
    progress: Callable[[str], None] | None = None,
    max_height: int = 1080,
    stall_s: float = DEFAULT_STALL_S,
) -> DownloadedVideo:
    """Download one video (at most max_height pixels tall) or return the copy already there.

    Raises DownloadFailed with a one-line reason: private, removed, geo-blocked, not a video,
    unreachable, no data for `stall_s` seconds, a broken download, or an unsupported URL.
    """
    if max_height < 1:
        raise ValueError(f"max_height must be positive, got {max_height}")
    key, shown = cache_key(url, max_height), redact(url.strip())
    dest_dir = Path(dest_dir).expanduser()
    dest_dir.mkdir(parents=True, exist_ok=True)
    entry = _entry_dir(dest_dir.resolve(), key)
    cached = _from_cache(entry, shown)
    if cached is not None:
        return cached
    sweep_scratch(dest_dir)
    try:
        with atomic_folder(entry) as scratch:
            info = _fetch(_lower_scheme(url), scratch, max_height, stall_s, progress)
            _verify(info["_file"], shown)
            name = info["_file"].name
            meta = {
                "file": name,
                "video_id": str(info["id"]),
                "extractor": str(info["extractor"]),
                "title": str(info.get("title") or info["id"]),
                "url": normalise_url(url),
            }
            (scratch / _INFO_FILE).write_text(json.dumps(meta))
    except (DownloadError, YoutubeDLError) as exc:
        reason = human_reason(redact(str(exc)), stall_s)
        raise DownloadFailed(f"cannot download {shown}: {reason}") from None
    except OSError as exc:
        raise DownloadFailed(f"cannot download {shown}: {_os_reason(exc)}") from None
    return DownloadedVideo(
        path=entry.resolve() / name,
        video_id=meta["video_id"],
        extractor=meta["extractor"],
        title=meta["title"],
        url=shown,
        cached=False,
    )


def _os_reason(exc: OSError) -> str:
    return redact(disk_message(exc))
