"""Files are published through lora_pipeline.files (unique temporary name, fsync, rename):
the media, vision, dataset and evaluation packages have no write-then-rename of their own,
and the sites that moved to it still publish whole files and leave nothing behind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PIL import Image

import lora_pipeline
from lora_pipeline.evaluation import service
from lora_pipeline.media.video import make_synthetic_video

PACKAGE = Path(lora_pipeline.__file__).parent
CHECKED = ("media", "vision", "dataset", "evaluation", "model_configs", "demo.py", "tiny_models.py")
# Whole folders published by one rename: a different job from a file, allowed to stay.
FOLDER_SWAPS = {
    "dataset/kohya_layout.py",
    "dataset/versions.py",
    "vision/tiny.py",
    "tiny_models.py",
}


def _sources() -> list[Path]:
    found: list[Path] = []
    for name in CHECKED:
        path = PACKAGE / name
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def _is_rename(call: ast.Call) -> bool:
    """os.replace / os.rename / tempfile.mkstemp, or Path.replace / Path.rename (one positional
    argument: str.replace takes two, datetime.replace keywords)."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    if (owner, func.attr) in {("os", "replace"), ("os", "rename"), ("tempfile", "mkstemp")}:
        return True
    return func.attr in {"replace", "rename"} and len(call.args) == 1 and not call.keywords


def _renames(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_rename(n)]


def test_no_hand_written_write_then_rename() -> None:
    found = {
        str(path.relative_to(PACKAGE)): lines
        for path in _sources()
        if str(path.relative_to(PACKAGE)) not in FOLDER_SWAPS and (lines := _renames(path))
    }
    assert not found, f"publish files with lora_pipeline.files instead: {found}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp*"))


def test_eval_images_are_whole_pngs_and_two_writers_do_not_share_a_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "grid.png"
    temporaries: list[Path] = []
    original_save = Image.Image.save

    def save(image: Image.Image, fp, *args, **kwargs) -> None:
        temporaries.append(Path(fp))
        original_save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    service._save_png(Image.new("RGB", (8, 8), (1, 2, 3)), target)
    service._save_png(Image.new("RGB", (8, 8), (4, 5, 6)), target)
    assert temporaries[0] != temporaries[1] != target
    with Image.open(target) as image:
        assert image.format == "PNG" and image.getpixel((0, 0)) == (4, 5, 6)
    assert _leftovers(tmp_path) == []


def test_synthetic_video_leaves_no_temporary(tmp_path: Path) -> None:
    # The download cache publishes each entry with files.atomic_folder; its test
    # (media/test_download.py) checks that no scratch folder is left.
    video = make_synthetic_video(tmp_path / "clip.mp4", 1, width=32, height=32, scenes=1)
    assert video.stat().st_size > 0
    assert _leftovers(tmp_path) == []
