from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from lora_pipeline.media import frames as frames_module
from lora_pipeline.media.frames import (
    FRAME_FILTERS,
    Candidate,
    FrameFilter,
    FrameFilters,
    FrameStats,
    IngestedFrame,
    build_filters,
    store_unique_frames,
)
from lora_pipeline.media.images import image_sha256, load_image
from lora_pipeline.media.phash import HashIndex, perceptual_hash
from lora_pipeline.media.store import DataRoot
from lora_pipeline.media.video import VideoFrame, extract_frames, make_synthetic_video

EXACT = FrameFilters.exact_only()


def _frame(index: int, colour: tuple[int, int, int], size: tuple[int, int] = (16, 8)) -> VideoFrame:
    return VideoFrame(index=index, timestamp_s=index / 2, image=Image.new("RGB", size, colour))


def _pattern(index: int, seed: int, size: tuple[int, int] = (320, 240)) -> VideoFrame:
    """A picture of random blocks: different seeds look nothing alike."""
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)
    return VideoFrame(index=index, timestamp_s=float(index), image=image)


def test_duplicates_within_the_stream_are_dropped(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    red, blue = (200, 0, 0), (0, 0, 200)
    frames = [_frame(0, red), _frame(1, red), _frame(2, blue), _frame(3, red), _frame(4, blue)]
    stats = FrameStats()
    kept = list(store_unique_frames(frames, root, stats, EXACT))
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
    kept = list(store_unique_frames([_frame(7, (1, 2, 3))], root, stats, EXACT))
    assert len(kept) == 1 and not kept[0].stored.created
    assert (stats.seen, stats.kept, stats.duplicates) == (1, 1, 0)


@pytest.mark.parametrize("workers", [1, 3])
def test_stream_is_lazy(tmp_path: Path, workers: int) -> None:
    """Frames are stored a few ahead of the reader, never the whole stream at once."""
    root = DataRoot(tmp_path / "data")
    pulled: list[int] = []

    def source():
        for index in range(100):
            pulled.append(index)
            yield _pattern(index, seed=index)

    stream = store_unique_frames(source(), root, FrameStats(), workers=workers)
    assert next(stream).index == 0
    assert next(stream).index == 1
    assert 2 < len(pulled) <= 2 + workers + 2
    stream.close()
    # Closing waits for the writes under way: no half-written temporary file is left behind.
    assert not list(root.path("images").rglob("*.tmp"))
    assert len(pulled) <= 2 + workers + 2


def test_static_shot_gives_one_frame(tmp_path: Path) -> None:
    """A held shot with compression-like noise is one frame, whatever its length."""
    root = DataRoot(tmp_path / "data")
    base = np.asarray(_pattern(0, seed=1).image, dtype=np.int16)
    noise = np.random.default_rng(0)
    held = [
        VideoFrame(
            i,
            float(i),
            Image.fromarray(np.clip(base + noise.integers(-2, 3, base.shape), 0, 255).astype("u1")),
        )
        for i in range(40)
    ]
    stats = FrameStats()
    kept = list(store_unique_frames([*held, _pattern(40, seed=2)], root, stats))
    assert [f.index for f in kept] == [0, 40]
    assert (stats.seen, stats.kept, stats.static) == (41, 2, 39)


def test_near_duplicates_anywhere_in_the_stream_are_dropped(tmp_path: Path) -> None:
    """A-B-A cuts: the return to shot A is a near-duplicate of the first A, not of B."""
    root = DataRoot(tmp_path / "data")
    a, b = _pattern(0, seed=1), _pattern(1, seed=2)
    a_again = VideoFrame(2, 2.0, a.image.filter(ImageFilter.GaussianBlur(0.6)))
    stats = FrameStats()
    kept = list(store_unique_frames([a, b, a_again], root, stats))
    assert [f.index for f in kept] == [0, 1]
    assert stats.near_duplicates == 1
    assert kept[0].phash == perceptual_hash(a.image)


def test_known_hashes_are_not_repeated(tmp_path: Path) -> None:
    """The character's dataset already has this picture (re-encoded): the frame is dropped,
    and kept frames join the index."""
    root = DataRoot(tmp_path / "data")
    existing = _pattern(0, seed=5)
    known = HashIndex([perceptual_hash(existing.image.resize((320, 240)))])
    stats = FrameStats()
    kept = list(store_unique_frames([existing, _pattern(1, seed=6)], root, stats, known=known))
    assert [f.index for f in kept] == [1]
    assert stats.near_duplicates == 1
    assert len(known) == 2


def test_near_duplicate_distance_is_configurable(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    a = _pattern(0, seed=1)
    draw_on = a.image.copy()
    ImageDraw.Draw(draw_on).rectangle((0, 0, 50, 40), fill=(255, 255, 255))
    changed = VideoFrame(1, 1.0, draw_on)
    distance = (perceptual_hash(a.image) ^ perceptual_hash(changed.image)).bit_count()
    assert 0 < distance < 30
    # The static-shot gate is off: this small change is what it would drop first.
    strict = FrameFilters(static_threshold=None, near_duplicate_distance=distance - 1)
    loose = FrameFilters(static_threshold=None, near_duplicate_distance=distance)
    assert len(list(store_unique_frames([a, changed], root, FrameStats(), strict))) == 2
    assert len(list(store_unique_frames([a, changed], root, FrameStats(), loose))) == 1


def test_blurry_and_small_frames_are_dropped(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    sharp = _pattern(0, seed=1, size=(320, 240))
    blurry = VideoFrame(
        1, 1.0, _pattern(1, seed=2, size=(320, 240)).image.filter(ImageFilter.GaussianBlur(8))
    )
    tiny = _pattern(2, seed=3, size=(100, 80))
    filters = FrameFilters(min_sharpness=50.0, min_side=120)
    stats = FrameStats()
    kept = list(store_unique_frames([sharp, blurry, tiny], root, stats, filters))
    assert [f.index for f in kept] == [0]
    assert (stats.blurry, stats.too_small) == (1, 1)
    # Off by default: the blurry frame is kept.
    assert len(list(store_unique_frames([blurry], root, FrameStats()))) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"static_threshold": 2.0},
        {"near_duplicate_distance": 65},
        {"min_sharpness": -1.0},
        {"min_side": 0},
    ],
)
def test_filter_settings_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FrameFilters(**bad)  # type: ignore[arg-type]


def test_frames_of_a_synthetic_video(tmp_path: Path, synthetic_video: Path) -> None:
    root = DataRoot(tmp_path / "data")
    stats = FrameStats()
    frames = extract_frames(synthetic_video, fps=6, max_frames=24)
    kept: list[IngestedFrame] = list(store_unique_frames(frames, root, stats, EXACT))
    assert stats.seen == 24
    assert stats.kept + stats.duplicates == stats.seen
    assert stats.kept == len(kept) > 4  # at least the four scenes
    assert len({f.stored.sha256 for f in kept}) == len(kept)
    for ingested in kept:
        image = load_image(root.path(ingested.stored.relpath))
        assert image.size == (ingested.stored.width, ingested.stored.height) == (160, 120)


def test_static_scenes_of_a_video_give_one_frame_each(tmp_path: Path) -> None:
    """Scenes 2 (colour bars) and 6 (a flat colour) are static: 4 samples each, 1 kept."""
    video = make_synthetic_video(tmp_path / "clip.mp4", 12, width=320, height=240, scenes=6)
    root = DataRoot(tmp_path / "data")
    stats = FrameStats()
    kept = list(store_unique_frames(extract_frames(video, fps=2, max_frames=24), root, stats))
    static_scenes = {1, 5}
    per_scene = {scene: [f for f in kept if f.index // 4 == scene] for scene in range(6)}
    assert all(len(per_scene[s]) == 1 for s in static_scenes)
    assert stats.seen == 24
    assert stats.static + stats.duplicates >= 6
    assert stats.kept == len(kept) == 24 - stats.static - stats.duplicates - stats.near_duplicates


class EvenIndexOnly(FrameFilter):
    """A filter the pipeline does not have: drops every frame with an odd index."""

    name = "odd_index"

    @classmethod
    def from_settings(cls, settings: FrameFilters, known: HashIndex) -> FrameFilter | None:
        return cls()

    def keeps(self, frame: Candidate) -> bool:
        return frame.frame.index % 2 == 0


def register_even_index_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a filter: the class above, plus its line in the registry."""
    monkeypatch.setattr(frames_module, "FRAME_FILTERS", [*FRAME_FILTERS, EvenIndexOnly])


def test_a_registered_filter_runs_with_its_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_even_index_only(monkeypatch)
    root = DataRoot(tmp_path / "data")
    frames = [_pattern(index, seed=index) for index in range(6)]
    stats = FrameStats()
    kept = list(store_unique_frames(frames, root, stats))
    assert [f.index for f in kept] == [0, 2, 4]
    assert stats.odd_index == 3 and stats.counts("odd_index").kept == 3
    metadata = stats.metadata()
    assert metadata["odd_index_dropped"] == 3
    assert metadata["frame_filters"]["odd_index"] == {"kept": 3, "dropped": 3}
    # The filters before it saw all six frames and let them through.
    assert metadata["frame_filters"]["too_small"] == {"kept": 6, "dropped": 0}
    assert stats.as_dict()["odd_index"] == 3


def test_filters_follow_the_settings_in_judging_order() -> None:
    names = [f.name for f in build_filters(FrameFilters(min_sharpness=10.0), HashIndex())]
    assert names == ["too_small", "duplicates", "static", "near_duplicates", "blurry"]
    assert [f.name for f in build_filters(EXACT, HashIndex())] == ["too_small", "duplicates"]
    # Filters turned off still report zeros, so the metadata keys do not change with settings.
    assert set(FrameStats().dropped()) == {cls.name for cls in FRAME_FILTERS}


def test_each_frame_is_counted_once_and_stats_add_up() -> None:
    first, second = FrameStats(seen=3, kept=1), FrameStats(seen=2, kept=2)
    first.counts("static").dropped, first.counts("static").kept = 2, 1
    second.counts("odd_index").dropped = 1
    first.add(second)
    assert (first.seen, first.kept, first.static, first.odd_index) == (5, 3, 2, 1)
    with pytest.raises(AttributeError):
        _ = first.no_such_filter


def test_frames_stored_by_several_threads_come_out_as_one_thread_stores_them(
    tmp_path: Path,
) -> None:
    frames = [_pattern(index, seed=index % 7) for index in range(20)]  # repeats: 7 distinct
    results = {}
    for workers in (1, 4):
        stats = FrameStats()
        root = DataRoot(tmp_path / f"data{workers}")
        kept = list(store_unique_frames(frames, root, stats, EXACT, workers=workers))
        results[workers] = ([(f.index, f.stored.sha256, f.phash) for f in kept], stats.as_dict())
    assert results[4] == results[1]
    assert [index for index, _, _ in results[4][0]] == list(range(7))
    shas = [sha for _, sha, _ in results[4][0]]
    assert shas == [image_sha256(frame.image) for frame in frames[:7]]


def test_a_stream_failing_part_way_gives_its_earlier_frames_then_the_error(
    tmp_path: Path,
) -> None:
    root = DataRoot(tmp_path / "data")

    def source():
        for index in range(5):
            yield _pattern(index, seed=index)
        raise OSError("decoder died")

    stats = FrameStats()
    given: list[IngestedFrame] = []
    with pytest.raises(OSError, match="decoder died"):
        for frame in store_unique_frames(source(), root, stats, EXACT, workers=3):
            given.append(frame)
    assert [frame.index for frame in given] == [0, 1, 2, 3, 4]
    assert (stats.seen, stats.kept) == (5, 5)
    assert all(root.path(frame.stored.relpath).is_file() for frame in given)
