from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from lora_pipeline.media.images import image_sha256, load_image
from lora_pipeline.media.store import DataRoot, StoredImage, UnsafePathError, sha256_file


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    return DataRoot(tmp_path / "data")


def test_root_is_created_and_resolved(tmp_path: Path) -> None:
    data = DataRoot(tmp_path / "a" / ".." / "data")
    assert data.root == (tmp_path / "data").resolve()
    assert data.root.is_dir()


def test_path_resolves_inside_root(root: DataRoot) -> None:
    assert root.path("images/ab/x.png") == root.root / "images" / "ab" / "x.png"
    assert root.path(Path("videos") / "a.mp4") == root.root / "videos" / "a.mp4"
    assert root.path("") == root.root


@pytest.mark.parametrize(
    "relpath",
    ["../x", "a/../../x", "a/../b", "/etc/passwd", "\\\\server\\share", "C:/x", "a\\..\\..\\x"],
)
def test_path_refuses_escapes(root: DataRoot, relpath: str) -> None:
    with pytest.raises(UnsafePathError):
        root.path(relpath)


def test_path_refuses_nul_byte(root: DataRoot) -> None:
    with pytest.raises(UnsafePathError, match="NUL"):
        root.path("a\x00b")


def test_symlink_out_of_root_is_refused(root: DataRoot, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root.root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="leaves the data root"):
        root.path("link/secret.txt")
    with pytest.raises(UnsafePathError):
        root.write_bytes_atomic("link/secret.txt", b"x")
    with pytest.raises(UnsafePathError):
        root.dir("link", "sub")
    assert list(outside.iterdir()) == []


def test_symlink_inside_root_is_allowed(root: DataRoot) -> None:
    (root.root / "real").mkdir()
    (root.root / "alias").symlink_to(root.root / "real")
    assert root.path("alias/file.txt") == root.root / "real" / "file.txt"


def test_relative(root: DataRoot, tmp_path: Path) -> None:
    assert root.relative(root.root / "images" / "ab" / "c.png") == "images/ab/c.png"
    assert root.relative(Path("sub/x.txt")) == "sub/x.txt"
    with pytest.raises(UnsafePathError, match="outside the data root"):
        root.relative(tmp_path / "elsewhere.txt")
    with pytest.raises(UnsafePathError):
        root.relative(Path("../x"))


def test_dir_creates_and_validates_each_part(root: DataRoot) -> None:
    created = root.dir("datasets", "alice", "v1")
    assert created == root.root / "datasets" / "alice" / "v1"
    assert created.is_dir()
    for bad in ("..", ".", "", "a/b", "a\\b", "x\x00"):
        with pytest.raises(UnsafePathError, match="single path component"):
            root.dir("datasets", bad)


def test_write_atomic_replaces_and_leaves_no_temp_files(root: DataRoot) -> None:
    target = root.write_bytes_atomic("out/a.bin", b"first")
    root.write_bytes_atomic("out/a.bin", b"second")
    assert target.read_bytes() == b"second"
    text = root.write_text_atomic("out/b.txt", "héllo\n")
    assert text.read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in (root.root / "out").iterdir()) == ["a.bin", "b.txt"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_old_file_and_cleans_up(root: DataRoot) -> None:
    target = root.write_bytes_atomic("out/a.bin", b"original")
    with pytest.raises(TypeError):
        root.write_bytes_atomic("out/a.bin", "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"original"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]


def test_write_refuses_directories(root: DataRoot) -> None:
    root.dir("folder")
    with pytest.raises(UnsafePathError, match="not a file path"):
        root.write_bytes_atomic("folder", b"x")
    with pytest.raises(UnsafePathError):
        root.write_bytes_atomic("", b"x")


def _picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([((x * 7 + seed) % 256, (x * 3) % 256, seed % 256) for x in range(40 * 30)])
    return image


def test_put_image_is_content_addressed_and_idempotent(root: DataRoot) -> None:
    first = root.put_image(_picture(1))
    again = root.put_image(_picture(1))
    other = root.put_image(_picture(2))
    assert first.created and not again.created and other.created
    assert first.sha256 == again.sha256 != other.sha256
    assert first.relpath == f"images/{first.sha256[:2]}/{first.sha256}.png"
    assert (first.width, first.height) == (40, 30)
    stored_file = root.path(first.relpath)
    assert sha256_file(stored_file) == first.sha256
    assert load_image(stored_file).tobytes() == _picture(1).tobytes()
    assert first == StoredImage(first.sha256, first.relpath, 40, 30, created=True)


def test_put_image_ignores_metadata_and_mode(root: DataRoot, tmp_path: Path) -> None:
    plain = _picture(3)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "prompt: something")
    tagged_file = tmp_path / "tagged.png"
    plain.save(tagged_file, pnginfo=info, dpi=(300, 300))
    tagged = Image.open(tagged_file)
    opaque_rgba = plain.convert("RGBA")
    shas = {root.put_image(img).sha256 for img in (plain, tagged, opaque_rgba)}
    assert shas == {image_sha256(plain)}
    stored = Image.open(root.path(root.put_image(tagged).relpath))
    assert "parameters" not in stored.info and "dpi" not in stored.info


def test_put_image_repairs_a_leftover_partial_file(root: DataRoot) -> None:
    stored = root.put_image(_picture(4))
    target = root.path(stored.relpath)
    target.write_bytes(target.read_bytes()[:10])
    repaired = root.put_image(_picture(4))
    assert repaired.created
    assert sha256_file(target) == stored.sha256


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
