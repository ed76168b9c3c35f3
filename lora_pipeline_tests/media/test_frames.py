from __future__ import annotations

from pathlib import Path

from PIL import Image

from lora_pipeline.media.frames import FrameStats, IngestedFrame, store_unique_frames
from lora_pipeline.media.images import image_sha256, load_image
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.video import VideoFrame, extract_frames


def _frame(index: int, colour: tuple[int, int, int]) -> VideoFrame:
    return VideoFrame(index=index, timestamp_s=index / 2, image=Image.new("RGB", (16, 8), colour))


def test_duplicates_within_the_stream_are_dropped(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    red, blue = (200, 0, 0), (0, 0, 200)
    frames = [_frame(0, red), _frame(1, red), _frame(2, blue), _frame(3, red), _frame(4, blue)]
    stats = FrameStats()
    kept = list(store_unique_frames(frames, root, stats))
    assert [f.index for f in kept] == [0, 2]
    assert [f.timestamp_s for f in kept] == [0.0, 1.0]
    assert (stats.seen, stats.kept, stats.duplicates) == (5, 2, 3)
    assert kept[0].stored.sha256 == image_sha256(frames[0].image)
    assert sorted(p.name for p in (root.root / "images").rglob("*.png")) == sorted(
        f"{f.stored.sha256}.png" for f in kept
    )


def test_frame_already_in_store_is_still_yielded(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    root.put_image(_frame(0, (1, 2, 3)).image)
    stats = FrameStats()
    kept = list(store_unique_frames([_frame(7, (1, 2, 3))], root, stats))
    assert len(kept) == 1 and not kept[0].stored.created
    assert (stats.seen, stats.kept, stats.duplicates) == (1, 1, 0)


def test_stream_is_lazy(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    pulled: list[int] = []

    def source():
        for index in range(100):
            pulled.append(index)
            yield _frame(index, (index, 0, 0))

    stream = store_unique_frames(source(), root, FrameStats())
    next(stream)
    next(stream)
    assert pulled == [0, 1]


def test_frames_of_a_synthetic_video(tmp_path: Path, synthetic_video: Path) -> None:
    root = DataRoot(tmp_path / "data")
    stats = FrameStats()
    frames = extract_frames(synthetic_video, fps=6, max_frames=24)
    kept: list[IngestedFrame] = list(store_unique_frames(frames, root, stats))
    assert stats.seen == 24
    assert stats.kept + stats.duplicates == stats.seen
    assert stats.kept == len(kept) > 4  # at least the four scenes
    assert len({f.stored.sha256 for f in kept}) == len(kept)
    for ingested in kept:
        image = load_image(root.path(ingested.stored.relpath))
        assert image.size == (ingested.stored.width, ingested.stored.height) == (160, 120)
