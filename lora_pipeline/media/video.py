"""Video probing and frame extraction through the ffmpeg binary that imageio-ffmpeg ships.

imageio-ffmpeg ships ffmpeg but no ffprobe, so `probe_video` reads the stream description that
`ffmpeg -i` prints on stderr. `extract_frames` runs one ffmpeg process that decodes, samples
with the `fps` filter and converts to RGB24 on a pipe; Python only slices the pipe into frames,
which keeps it close to the speed of bare ffmpeg.

ffmpeg only ever reads the one file it is given: the container is recognised here from its
first bytes (a short list of real video containers), ffmpeg is told that demuxer with `-f`,
and `-protocol_whitelist file` stops anything inside the file from opening a URL. A playlist
or manifest (HLS, DASH, ffconcat, m3u) would make ffmpeg read the files it names; it is no
video container and is refused before ffmpeg sees it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import imageio_ffmpeg
from PIL import Image

from lora_pipeline.errors import PipelineError
from lora_pipeline.files import atomic_path
from lora_pipeline.media.images import sniff_image_format

# Demuxers that turn non-videos into frames: still images (image2, png_pipe, ...) and text
# rendered as ANSI art (tty, bin, ...), which ffmpeg happily "plays".
_NOT_VIDEO_FORMATS = re.compile(r"^(image2|\w+_pipe|tty|bin|xbin|adf|idf)$")
# ffmpeg prefixes its log lines with the component, e.g. "[in#0 @ 0x55d0...] ".
_LOG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")
_UNINFORMATIVE = (
    "At least one output file must be specified",
    "Error opening input file",
    "Error opening input files",
)
_PROBE_TIMEOUT_S = 60.0
# 8K is 33 Mpx; anything beyond 64 Mpx a frame is a decompression bomb, not footage.
MAX_FRAME_PIXELS = 64_000_000
# Bigger pipe buffers mean fewer context switches between ffmpeg and us for large frames.
_PIPE_SIZE = 1 << 20


class VideoError(PipelineError, RuntimeError):
    """A video cannot be read: missing, empty, corrupt, truncated or not a video at all."""


@dataclass
class VideoInfo:
    """What a video holds. width/height are the size of extracted frames (display size)."""

    duration_s: float
    width: int
    height: int
    fps: float
    container: Container


@dataclass
class VideoFrame:
    index: int
    timestamp_s: float
    image: Image.Image


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or IMAGEIO_FFMPEG_EXE)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def _has_encoder(name: str) -> bool:
    result = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-encoders"],
        capture_output=True,
        text=True,
        check=False,
    )
    return any(line.split()[1:2] == [name] for line in result.stdout.splitlines())


@dataclass(frozen=True)
class Container:
    demuxer: str  # the ffmpeg demuxer forced with -f
    suffix: str  # the file name suffix a stored copy gets


_HEAD_BYTES = 4096
# Text that makes a file a list of other files or URLs rather than a video.
_PLAYLIST_MARKERS = (b"#extm3u", b"#ext-x-", b"<mpd", b"ffconcat", b"[playlist]", b"<smil")
_ISO_BOXES = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")


class PlaylistError(VideoError):
    """A playlist or manifest: it names other files, so ffmpeg is never given it."""


def _read_head(path: Path) -> bytes:
    with Path(path).open("rb") as handle:
        return handle.read(_HEAD_BYTES)


def is_playlist(head: bytes) -> bool:
    """Whether the first bytes of a file are a playlist or manifest (HLS, DASH, m3u, ...)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return any(marker in text[:1024] for marker in _PLAYLIST_MARKERS) or text.startswith(b"file ")


def _mpegts(head: bytes, offset: int = 0, size: int = 188) -> bool:
    """Three packets in a row start with the sync byte (size 188, or 192 for .m2ts)."""
    marks = [offset + size * n for n in range(3)]
    return len(head) > marks[-1] and all(head[mark] == 0x47 for mark in marks)


def sniff_container(head: bytes) -> Container | None:
    """The video container the bytes start with, from a short list; None for anything else."""
    if head[4:8] in _ISO_BOXES:
        return Container("mov", ".mov" if head[8:12] == b"qt  " else ".mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return Container("matroska", ".webm" if b"webm" in head[:64] else ".mkv")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return Container("avi", ".avi")
    if head.startswith(b"FLV\x01"):
        return Container("flv", ".flv")
    if head.startswith(b"OggS"):
        return Container("ogg", ".ogv")
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return Container("asf", ".wmv")
    if head.startswith(b"\x00\x00\x01\xba"):
        return Container("mpeg", ".mpg")
    if _mpegts(head) or _mpegts(head, offset=4, size=192):
        return Container("mpegts", ".ts")
    if head.startswith(b"\x06\x0e\x2b\x34\x02\x05\x01\x01"):
        return Container("mxf", ".mxf")
    return None


def detect_container(path: Path) -> Container:
    """The container of a video file; VideoError (PlaylistError) when it is none we read."""
    path = Path(path)
    _check_file(path)
    head = _read_head(path)
    if is_playlist(head):
        raise PlaylistError(
            f"{path.name}: a playlist or manifest, which names other files; "
            "give the video file itself"
        )
    container = sniff_container(head)
    if container is None:
        if sniff_image_format(path) is not None:
            raise VideoError(f"{path.name}: not a video (a still image)")
        raise VideoError(f"{path.name}: not a readable video (no known video container)")
    return container


def _input_args(path: Path, container: Container) -> list[str]:
    """ffmpeg's input: the one local file, read with the detected demuxer and no protocol
    but `file` (so nothing the file says can open another file or a URL)."""
    # "file:" stops ffmpeg from reading a name like "concat:..." or "-x" as a protocol/option.
    url = "file:" + str(path.resolve())
    return ["-protocol_whitelist", "file", "-f", container.demuxer, "-i", url]


def _error_reason(stderr: str) -> str:
    """The most specific line of an ffmpeg error log, without component prefixes."""
    for raw in stderr.splitlines():
        line = _LOG_PREFIX.sub("", raw).strip()
        if not line or line.startswith(_UNINFORMATIVE) or "misdetection possible" in line:
            continue
        if line.startswith(("Input #", "Duration:", "Stream #", "Metadata:")):
            continue
        return line.removeprefix("Error opening input: ")
    return "ffmpeg could not read it"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: not a video (zero bytes)")


def _parse_timestamp(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _video_stream_block(stderr: str) -> list[str] | None:
    """The lines describing the first real video stream (cover art is not a video)."""
    lines = stderr.splitlines()
    for start, line in enumerate(lines):
        if "Stream #" in line and ": Video:" in line and "(attached pic)" not in line:
            block = [line]
            for follow in lines[start + 1 :]:
                if "Stream #" in follow or not follow.startswith("    "):
                    break
                block.append(follow)
            return block
    return None


def _parse_fps(stream_line: str) -> float:
    for unit in ("fps", "tbr"):
        match = re.search(rf"(\d+(?:\.\d+)?)(k?) {unit}\b", stream_line)
        if match:
            return float(match.group(1)) * (1000 if match.group(2) else 1)
    return 0.0


def _display_size(stream_block: list[str]) -> tuple[int, int]:
    """Frame size after ffmpeg applies rotation metadata and we square the pixels."""
    line = stream_block[0]
    size = re.search(r", (\d{2,5})x(\d{2,5})\b", line)
    if not size:
        raise VideoError("no frame size in the video stream")
    width, height = int(size.group(1)), int(size.group(2))
    sar = re.search(r"\[SAR (\d+):(\d+)", line)
    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0:
        # Anamorphic sources (DVD rips) store non-square pixels; stretch to what viewers see.
        width = max(2, round(width * int(sar.group(1)) / int(sar.group(2)) / 2) * 2)
    rotation = re.search(r"rotation of (-?\d+(?:\.\d+)?) degrees", "\n".join(stream_block))
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width
    return width, height


def _duration_by_remux(path: Path, container: Container) -> float:
    """Duration of containers that do not declare one, by copying packets (no decoding)."""
    result = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", *_input_args(path, container)]
        + ["-map", "0:V:0", "-c", "copy", "-f", "null", "-"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=_PROBE_TIMEOUT_S * 5,
        check=False,
    )
    times = re.findall(r"time=(\d+:\d{2}:\d{2}(?:\.\d+)?)", result.stderr)
    return _parse_timestamp(times[-1]) if times else 0.0


def probe_video(path: Path) -> VideoInfo:
    """Read duration, frame size and frame rate; VideoError if it is not a readable video."""
    path = Path(path)
    container = detect_container(path)
    try:
        result = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", *_input_args(path, container)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VideoError(f"{path.name}: ffmpeg took too long to read the header") from exc
    stderr = result.stderr
    input_format = re.search(r"^Input #0, ([^,]+),", stderr, re.MULTILINE)
    if not input_format:
        raise VideoError(f"{path.name}: not a readable video ({_error_reason(stderr)})")
    if _NOT_VIDEO_FORMATS.match(input_format.group(1)):
        raise VideoError(f"{path.name}: not a video ({input_format.group(1)} content)")
    block = _video_stream_block(stderr)
    if block is None:
        raise VideoError(f"{path.name}: not a video (no readable video stream)")
    width, height = _display_size(block)
    duration = re.search(r"Duration: (\d+:\d{2}:\d{2}(?:\.\d+)?)", stderr)
    duration_s = (
        _parse_timestamp(duration.group(1)) if duration else _duration_by_remux(path, container)
    )
    if duration_s <= 0:
        raise VideoError(f"{path.name}: not a video (no duration; empty or a single picture)")
    fps = _parse_fps(block[0])
    return VideoInfo(
        duration_s=duration_s, width=width, height=height, fps=fps, container=container
    )


def verify_video(path: Path) -> VideoInfo:
    """probe_video, plus a read of every packet (no decoding) that finds a truncated file.

    A cut mp4 whose index is at the front probes fine and fails only part way through
    decoding; copying its packets to nowhere finds that in about the time of reading the file.
    """
    info = probe_video(path)
    if info.width * info.height > MAX_FRAME_PIXELS:
        raise VideoError(
            f"{Path(path).name}: frames of {info.width}x{info.height} are too large "
            f"(limit {MAX_FRAME_PIXELS} pixels)"
        )
    try:
        result = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
            + _input_args(Path(path), info.container)
            + ["-map", "0:V:0", "-c", "copy", "-f", "null", "-"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_PROBE_TIMEOUT_S * 5,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VideoError(f"{Path(path).name}: ffmpeg took too long to read the file") from exc
    if "partial file" in result.stderr:
        raise VideoError(f"{Path(path).name}: video is truncated (the file ends too early)")
    if result.returncode != 0:
        raise VideoError(f"{Path(path).name}: corrupt video ({_error_reason(result.stderr)})")
    return info


def _extract_command(video: Path, fps: float, max_frames: int, info: VideoInfo) -> list[str]:
    width, height = info.width, info.height
    # The explicit scale pins the frame size we slice the pipe by, whatever ffmpeg's
    # autorotation does; at equal size it is the same swscale pass ffmpeg would insert anyway.
    video_filter = f"fps={fps:.6g},scale={width}:{height}"
    return [
        ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        *_input_args(video, info.container),
        "-map",
        "0:V:0",  # capital V: the first video stream that is not cover art
        "-an",
        "-sn",
        "-dn",
        "-vf",
        video_filter,
        "-frames:v",
        str(max_frames),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]


def _enlarge_pipe(pipe: IO[bytes]) -> None:
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _read_exact(pipe: IO[bytes], buffer: memoryview) -> int:
    """Fill buffer from the pipe; returns the bytes read (less only at end of stream)."""
    filled = 0
    while filled < len(buffer):
        count = pipe.readinto(buffer[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    return filled


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout:
        process.stdout.close()


def _read_log(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode("utf-8", errors="replace")


def extract_frames(video: Path, fps: float, max_frames: int) -> Iterator[VideoFrame]:
    """Yield up to max_frames RGB frames sampled at `fps` frames per second of video.

    Bad arguments and unreadable files fail here, at the call. Frames then stream as they are
    decoded; a video that turns out truncated or corrupt part way raises VideoError after the
    frames before the damage were yielded. Closing the iterator early stops ffmpeg.
    """
    video = Path(video)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames!r}")
    info = probe_video(video)
    if info.width * info.height > MAX_FRAME_PIXELS:
        # Each frame is one buffer of width x height x 3 bytes: refuse a "video bomb".
        raise VideoError(
            f"{video.name}: frames of {info.width}x{info.height} are too large "
            f"(limit {MAX_FRAME_PIXELS} pixels)"
        )
    return _stream_frames(video, fps, max_frames, info)


def _stream_frames(
    video: Path, fps: float, max_frames: int, info: VideoInfo
) -> Iterator[VideoFrame]:
    size = (info.width, info.height)
    frame_bytes = info.width * info.height * 3
    # A file, not a pipe, for the log: an unread stderr pipe could fill up and stall ffmpeg.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            _extract_command(video, fps, max_frames, info),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            bufsize=0,
        )
        try:
            assert process.stdout is not None
            _enlarge_pipe(process.stdout)
            buffer = bytearray(frame_bytes)
            view = memoryview(buffer)
            index = 0
            while index < max_frames:
                count = _read_exact(process.stdout, view)
                if count == 0:
                    break
                if count < frame_bytes:
                    raise VideoError(f"{video.name}: ffmpeg stopped in the middle of a frame")
                image = Image.frombytes("RGB", size, buffer)
                yield VideoFrame(index=index, timestamp_s=index / fps, image=image)
                index += 1
            if index >= max_frames:
                return
            _raise_on_decode_failure(video, process.wait(), _read_log(log), index)
        finally:
            _stop(process)


def _raise_on_decode_failure(video: Path, returncode: int, log: str, frames: int) -> None:
    if returncode != 0:
        raise VideoError(f"{video.name}: ffmpeg failed ({_error_reason(log)})")
    if "partial file" in log:
        raise VideoError(f"{video.name}: video is truncated (decoded {frames} frames)")
    if frames == 0:
        raise VideoError(f"{video.name}: no frames could be decoded ({_error_reason(log)})")


# Lavfi sources that look nothing alike; scenes beyond these get a hue rotation.
_SCENE_SOURCES = (
    "testsrc=size={w}x{h}:rate={r}",
    "smptebars=size={w}x{h}:rate={r}",
    "mandelbrot=size={w}x{h}:rate={r}",
    "testsrc2=size={w}x{h}:rate={r}",
    "rgbtestsrc=size={w}x{h}:rate={r}",
    "color=c=0x3366cc:size={w}x{h}:rate={r}",
)


def _scene_filter(index: int, scenes: int, seconds_each: float) -> str:
    hue = f",hue=h={index * 360 / scenes:.3f}" if index >= len(_SCENE_SOURCES) else ""
    trim = f"trim=duration={seconds_each:.6f},setpts=PTS-STARTPTS"
    return f"[{index}:v]{trim},setsar=1{hue}[s{index}]"


def make_synthetic_video(
    path: Path,
    seconds: float,
    width: int = 320,
    height: int = 240,
    fps: int = 24,
    scenes: int = 4,
) -> Path:
    """Write an mp4 of `scenes` visually distinct segments made from ffmpeg test sources."""
    path = Path(path)
    if not (seconds > 0 and scenes >= 1 and fps >= 1):
        raise ValueError("seconds, fps and scenes must be positive")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and at least 16, got {width}x{height}")
    seconds_each = seconds / scenes
    inputs: list[str] = []
    for index in range(scenes):
        source = _SCENE_SOURCES[index % len(_SCENE_SOURCES)].format(w=width, h=height, r=fps)
        inputs += ["-f", "lavfi", "-i", source]
    graph = ";".join(_scene_filter(i, scenes, seconds_each) for i in range(scenes))
    labels = "".join(f"[s{i}]" for i in range(scenes))
    graph += f";{labels}concat=n={scenes}:v=1:a=0,format=yuv420p[out]"
    codec = ["-c:v", "libx264", "-preset", "veryfast"] if _has_encoder("libx264") else []
    codec = codec or ["-c:v", "mpeg4", "-q:v", "4"]
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *inputs]
    command += ["-filter_complex", graph, "-map", "[out]", "-r", str(fps), *codec]
    with atomic_path(path) as temporary:
        # -f mp4: the temporary name does not end in .mp4, so ffmpeg is told the format.
        command += ["-movflags", "+faststart", "-f", "mp4", str(temporary)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise VideoError(f"could not make a synthetic video: {_error_reason(result.stderr)}")
    return path
