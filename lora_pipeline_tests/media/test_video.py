from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from lora_pipeline.media.video import (
    PlaylistError,
    VideoError,
    extract_frames,
    ffmpeg_exe,
    make_synthetic_video,
    probe_video,
    verify_video,
)
from lora_pipeline_tests.media.conftest import VIDEO_SECONDS, VIDEO_SIZE


def test_probe_reads_duration_size_and_rate(synthetic_video: Path) -> None:
    info = probe_video(synthetic_video)
    assert info.duration_s == pytest.approx(VIDEO_SECONDS, abs=0.1)
    assert (info.width, info.height) == VIDEO_SIZE
    assert info.fps == pytest.approx(24)


@pytest.mark.parametrize(("fps", "max_frames"), [(2.0, 100), (5.0, 7), (0.5, 100)])
def test_extract_frame_count_timestamps_and_size(
    synthetic_video: Path, fps: float, max_frames: int
) -> None:
    frames = list(extract_frames(synthetic_video, fps=fps, max_frames=max_frames))
    expected = min(max_frames, VIDEO_SECONDS * fps)
    assert abs(len(frames) - expected) <= 1
    assert len(frames) <= max_frames
    assert [f.index for f in frames] == list(range(len(frames)))
    assert [f.timestamp_s for f in frames] == pytest.approx([i / fps for i in range(len(frames))])
    for frame in frames:
        assert frame.image.mode == "RGB"
        assert frame.image.size == VIDEO_SIZE


def test_scenes_are_visually_distinct(synthetic_video: Path) -> None:
    # One frame from the middle of each of the 4 one-second scenes.
    frames = list(extract_frames(synthetic_video, fps=1, max_frames=4))
    means = [tuple(ImageStat.Stat(f.image).mean) for f in frames]
    for i in range(len(means)):
        for j in range(i + 1, len(means)):
            distance = sum(abs(a - b) for a, b in zip(means[i], means[j], strict=True))
            assert distance > 10, (i, j, means)


def _ffmpeg_children() -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and "ffmpeg" in stat:
            children.append(int(entry))
    return children


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_stopping_early_ends_ffmpeg(synthetic_video: Path) -> None:
    frames = extract_frames(synthetic_video, fps=24, max_frames=1000)
    first = next(frames)
    assert first.index == 0
    frames.close()
    assert _ffmpeg_children() == []
    limited = list(extract_frames(synthetic_video, fps=24, max_frames=3))
    assert len(limited) == 3
    assert _ffmpeg_children() == []


def test_odd_file_names_are_read_as_files(tmp_path: Path, synthetic_video: Path) -> None:
    # ffmpeg would treat "concat:" as a protocol and a leading "-" as an option.
    odd = tmp_path / "-concat:a|b.mp4"
    shutil.copy(synthetic_video, odd)
    assert probe_video(odd).width == VIDEO_SIZE[0]
    assert len(list(extract_frames(odd, fps=1, max_frames=2))) == 2


def _one_line(error: pytest.ExceptionInfo[VideoError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_zero_byte_video(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(VideoError, match="zero bytes") as error:
        probe_video(empty)
    _one_line(error)
    with pytest.raises(VideoError):
        extract_frames(empty, fps=1, max_frames=5)  # fails at the call, before any iteration


def test_missing_video(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no such video file"):
        probe_video(tmp_path / "nope.mp4")


def test_corrupt_video(tmp_path: Path) -> None:
    corrupt = tmp_path / "noise.mp4"
    corrupt.write_bytes(os.urandom(20_000))
    with pytest.raises(VideoError, match=r"noise\.mp4: not a readable video") as error:
        probe_video(corrupt)
    _one_line(error)


def test_video_truncated_in_its_header(tmp_path: Path, synthetic_video: Path) -> None:
    cut = tmp_path / "cut_header.mp4"
    cut.write_bytes(synthetic_video.read_bytes()[:300])
    with pytest.raises(VideoError, match="not a (readable )?video") as error:
        list(extract_frames(cut, fps=2, max_frames=100))
    _one_line(error)


def test_video_truncated_in_its_data(tmp_path: Path, synthetic_video: Path) -> None:
    data = synthetic_video.read_bytes()
    cut = tmp_path / "cut_data.mp4"
    cut.write_bytes(data[: len(data) // 2])
    received = []
    with pytest.raises(VideoError, match="truncated") as error:
        for frame in extract_frames(cut, fps=2, max_frames=100):
            received.append(frame)
    _one_line(error)
    # What came before the damage is still delivered, and is less than the whole video.
    assert 0 < len(received) < VIDEO_SECONDS * 2


def test_still_image_is_not_a_video(tmp_path: Path) -> None:
    picture = tmp_path / "picture.mp4"
    Image.new("RGB", (32, 32), "red").save(picture, format="PNG")
    with pytest.raises(VideoError, match="not a video"):
        probe_video(picture)


def test_audio_only_is_not_a_video(tmp_path: Path) -> None:
    audio = tmp_path / "sound.m4a"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"]
        + ["sine=duration=0.5", "-c:a", "aac", str(audio)],
        check=True,
    )
    with pytest.raises(VideoError, match="no readable video stream"):
        probe_video(audio)


def test_text_file_is_not_a_video(tmp_path: Path) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("hello\n" * 100)
    # ffmpeg's tty demuxer would otherwise "play" any text file as ANSI art.
    with pytest.raises(VideoError, match="not a (readable )?video"):
        probe_video(text)


def test_bad_arguments(synthetic_video: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fps"):
        extract_frames(synthetic_video, fps=0, max_frames=5)
    with pytest.raises(ValueError, match="max_frames"):
        extract_frames(synthetic_video, fps=1, max_frames=0)
    with pytest.raises(ValueError, match="even"):
        make_synthetic_video(tmp_path / "odd.mp4", 1, width=33)


def test_synthetic_video_options(tmp_path: Path) -> None:
    path = make_synthetic_video(tmp_path / "sub" / "seven.mp4", 1.4, 64, 48, fps=10, scenes=7)
    info = probe_video(path)
    assert info.duration_s == pytest.approx(1.4, abs=0.15)
    assert (info.width, info.height, info.fps) == (64, 48, 10)
    frames = list(extract_frames(path, fps=5, max_frames=100))
    assert len({f.image.tobytes() for f in frames}) == len(frames)
    assert [p.name for p in path.parent.iterdir()] == ["seven.mp4"]


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    diff = ImageChops.difference(a, b)
    return sum(ImageStat.Stat(diff).mean) / 3


def test_rotation_metadata_gives_upright_frames(tmp_path: Path, synthetic_video: Path) -> None:
    rotated = tmp_path / "phone.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-display_rotation", "90"]
        + ["-i", str(synthetic_video), "-c", "copy", str(rotated)],
        check=True,
    )
    info = probe_video(rotated)
    assert (info.width, info.height) == (VIDEO_SIZE[1], VIDEO_SIZE[0])
    upright = next(extract_frames(rotated, fps=1, max_frames=1)).image
    original = next(extract_frames(synthetic_video, fps=1, max_frames=1)).image
    assert upright.size == (VIDEO_SIZE[1], VIDEO_SIZE[0])
    turned = [
        original.transpose(t) for t in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
    ]
    assert min(_mean_difference(upright, t) for t in turned) < 3


def test_non_square_pixels_are_squared(tmp_path: Path, synthetic_video: Path) -> None:
    anamorphic = tmp_path / "dvd.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(synthetic_video)]
        + ["-t", "1", "-vf", "setsar=2/1", "-c:v", "mpeg4"]
        + [str(anamorphic)],
        check=True,
    )
    info = probe_video(anamorphic)
    assert (info.width, info.height) == (VIDEO_SIZE[0] * 2, VIDEO_SIZE[1])
    frame = next(extract_frames(anamorphic, fps=1, max_frames=1))
    assert frame.image.size == (VIDEO_SIZE[0] * 2, VIDEO_SIZE[1])


@pytest.mark.parametrize(
    ("extension", "demuxer", "suffix"),
    [("mkv", "matroska", ".mkv"), ("ts", "mpegts", ".ts"), ("mov", "mov", ".mov")],
)
def test_each_container_is_read_with_its_own_demuxer(
    tmp_path: Path, synthetic_video: Path, extension: str, demuxer: str, suffix: str
) -> None:
    remuxed = tmp_path / f"clip.{extension}"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(synthetic_video)]
        + ["-c", "copy", str(remuxed)],
        check=True,
    )
    info = verify_video(remuxed)
    assert (info.container.demuxer, info.container.suffix) == (demuxer, suffix)
    assert len(list(extract_frames(remuxed, fps=1, max_frames=2))) == 2


def test_every_ffmpeg_input_is_the_one_file_with_a_fixed_demuxer(
    synthetic_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.media import video

    commands: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(command, *args, **kwargs):
        commands.append(list(command))
        return real_run(command, *args, **kwargs)

    def popen(command, *args, **kwargs):
        commands.append(list(command))
        return real_popen(command, *args, **kwargs)

    monkeypatch.setattr(video.subprocess, "run", run)
    monkeypatch.setattr(video.subprocess, "Popen", popen)
    verify_video(synthetic_video)
    list(extract_frames(synthetic_video, fps=1, max_frames=1))
    assert len(commands) >= 3
    for command in commands:
        at = command.index("-i")
        assert command[at - 4 : at] == ["-protocol_whitelist", "file", "-f", "mov"]
        assert command[at + 1] == f"file:{synthetic_video.resolve()}"


def test_a_playlist_never_reaches_ffmpeg(
    tmp_path: Path, synthetic_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_pipeline.media import video

    def refuse(*args, **kwargs):
        raise AssertionError("ffmpeg was run on a playlist")

    monkeypatch.setattr(video.subprocess, "run", refuse)
    monkeypatch.setattr(video.subprocess, "Popen", refuse)
    playlist = tmp_path / "clip.mp4"  # named like a video, as a stored upload could be
    playlist.write_text(f"#EXTM3U\n#EXTINF:4,\n{synthetic_video}\n#EXT-X-ENDLIST\n")
    with pytest.raises(PlaylistError, match="playlist or manifest"):
        extract_frames(playlist, fps=1, max_frames=5)
    with pytest.raises(PlaylistError):
        verify_video(playlist)


@pytest.mark.parametrize(
    ("extension", "encoder", "demuxer", "suffix"),
    [
        ("avi", "mpeg4", "avi", ".avi"),
        ("flv", "flv", "flv", ".flv"),
        ("mpg", "mpeg2video", "mpeg", ".mpg"),
        ("wmv", "wmv2", "asf", ".wmv"),
        ("mxf", "mpeg2video", "mxf", ".mxf"),
        ("m2ts", "mpeg2video", "mpegts", ".ts"),
        ("webm", "libvpx", "matroska", ".webm"),
        ("ogv", "libtheora", "ogg", ".ogv"),
    ],
)
def test_the_other_containers_studios_use(
    tmp_path: Path, extension: str, encoder: str, demuxer: str, suffix: str
) -> None:
    from lora_pipeline.media.video import _has_encoder

    if not _has_encoder(encoder):
        pytest.skip(f"this ffmpeg has no {encoder} encoder")
    path = tmp_path / f"clip.{extension}"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"]
        + ["testsrc=size=64x48:rate=25:duration=1", "-c:v", encoder, str(path)],
        check=True,
    )
    info = verify_video(path)
    assert (info.container.demuxer, info.container.suffix) == (demuxer, suffix)
    assert len(list(extract_frames(path, fps=2, max_frames=2))) == 2
