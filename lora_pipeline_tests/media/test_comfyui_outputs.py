"""The ComfyUI output folder: new files once, matched by name, generation settings read."""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_pipeline.media.comfyui_outputs import (
    CharacterName,
    match_character,
    match_project,
    output_path,
    params_from_graph,
    read_generation_params,
    scan_output_folder,
)
from lora_pipeline.media.comfyui_scan import register_new_outputs
from lora_pipeline.media.store import UnsafePathError
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import ComfyuiOutputFile, Source
from lora_pipeline_tests.media.conftest import demo_registry

SAMPLE = Path(__file__).parent / "data" / "comfyui_run3_prompt_request.json"
CAST = [CharacterName("aiko", "char_aiko"), CharacterName("aiko-school", "aiko_school")]


def _graph() -> dict:
    return json.loads(SAMPLE.read_text())["prompt"]


def write_output(folder: Path, relpath: str, graph: dict | None = None, age_s: float = 60) -> Path:
    """A ComfyUI-like PNG, with its `prompt` chunk, last modified `age_s` ago."""
    path = folder / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if graph is not None:
        info.add_text("prompt", json.dumps(graph))
        info.add_text("workflow", json.dumps({"nodes": []}))
    # A different picture per name, with structure, so no two outputs are near-duplicates.
    rng = np.random.default_rng(zlib.crc32(relpath.encode()))
    blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    picture = Image.fromarray(blocks).resize((256, 256), Image.Resampling.NEAREST)
    picture.save(path, pnginfo=info)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_params_from_the_reference_graph() -> None:
    params = params_from_graph(_graph())
    assert params == {
        "backend": "comfyui",
        "seed": 43,
        "steps": 2,
        "cfg": 7.0,
        "sampler": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
        "prompt": "a photo of a cat",
        "negative_prompt": "blurry",
        "width": 64,
        "height": 64,
        "checkpoint": "random_sd15.safetensors",
        "loras": [
            {
                "name": "random_kohya_r4.safetensors",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            }
        ],
    }


def test_params_follow_text_links_and_pick_the_first_pass() -> None:
    graph = _graph()
    graph["10"] = {"class_type": "PrimitiveString", "inputs": {"value": "aiko, teal hair"}}
    graph["3"]["inputs"]["text"] = ["10", 0]
    # A hires-fix pass samples again from the first pass's latent, with its own seed.
    graph["11"] = {
        "class_type": "KSampler",
        "inputs": {**graph["6"]["inputs"], "seed": 999, "latent_image": ["6", 0]},
    }
    params = params_from_graph(graph)
    assert params is not None
    assert params["prompt"] == "aiko, teal hair" and params["seed"] == 43
    assert params_from_graph({"1": {"class_type": "SaveImage", "inputs": {}}}) is None


def test_read_generation_params_from_png(tmp_path: Path) -> None:
    with_graph = write_output(tmp_path, "a.png", _graph())
    assert read_generation_params(with_graph)["seed"] == 43
    assert read_generation_params(write_output(tmp_path, "b.png")) is None
    jpeg = tmp_path / "c.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    assert read_generation_params(jpeg) is None
    broken = tmp_path / "d.png"
    broken.write_bytes(b"not a png")
    assert read_generation_params(broken) is None


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("aiko_00001_.png", "aiko"),
        ("AIKO-2.png", "aiko"),
        ("aiko.png", "aiko"),
        ("char_aiko_00007_.png", "aiko"),
        ("aiko_school_00001_.png", "aiko-school"),
        ("aiko-school-3.png", "aiko-school"),
        ("aikoto_00001_.png", None),
        ("ComfyUI_00001_.png", None),
        ("aiko/ComfyUI_00001_.png", "aiko"),
        ("batch/aiko_00001_.png", "aiko"),
    ],
)
def test_match_character_by_name(relpath: str, expected: str | None) -> None:
    assert match_character(relpath, CAST) == expected


def test_match_project() -> None:
    assert match_project("demo_00001_.png", ["demo", "other"]) == "demo"
    assert match_project("ComfyUI_00001_.png", ["demo"]) is None


def test_scan_finds_new_settled_images_only(tmp_path: Path) -> None:
    folder = tmp_path / "output"
    old = write_output(folder, "aiko_00001_.png")
    write_output(folder, "sub/aiko_00002_.png", age_s=30)
    write_output(folder, "aiko_00003_.png", age_s=0)  # still being written
    (folder / "notes.txt").write_text("not an image")
    write_output(folder, ".hidden/aiko_00004_.png")
    (folder / "link.png").symlink_to(old)
    found = scan_output_folder(folder, seen=set())
    assert [f.relpath for f in found] == ["aiko_00001_.png", "sub/aiko_00002_.png"]
    assert found[0].size == old.stat().st_size
    again = scan_output_folder(folder, seen={found[0].key})
    assert [f.relpath for f in again] == ["sub/aiko_00002_.png"]
    assert scan_output_folder(folder, seen=set(), limit=1) == found[:1]
    with pytest.raises(FileNotFoundError):
        scan_output_folder(tmp_path / "missing", seen=set())


def test_output_path_stays_inside(tmp_path: Path) -> None:
    assert output_path(tmp_path, "a/b.png") == (tmp_path / "a" / "b.png").resolve()
    for bad in ("../x.png", "/etc/passwd", "a/../../x.png"):
        with pytest.raises(UnsafePathError):
            output_path(tmp_path, bad)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = demo_registry(tmp_path)
    yield registry
    registry.dispose()


def test_register_each_file_once_across_restarts(tmp_path: Path, registry: Registry) -> None:
    folder = tmp_path / "output"
    write_output(folder, "aiko_00001_.png", _graph())
    write_output(folder, "ComfyUI_00001_.png")
    logs: list[str] = []
    first = register_new_outputs(registry, folder, None, logs.append)
    assert len(first.source_ids) == 2 and first.unmatched == []
    # A restart: a new Registry object on the same database sees the files as known.
    again = Registry(registry.url)
    try:
        assert register_new_outputs(again, folder, None, logs.append).source_ids == []
    finally:
        again.dispose()
    with registry.session() as session:
        by_uri = {s.uri: s for s in session.query(Source).all()}
        aiko = commands.get_character(session, "aiko")
        assert by_uri["aiko_00001_.png"].mode == "single"
        assert by_uri["aiko_00001_.png"].character_id == aiko.id
        # The only project takes the file whose name says nothing: identification decides.
        assert by_uri["ComfyUI_00001_.png"].mode == "project"
        assert {s.kind for s in by_uri.values()} == {"comfyui_output"}
    # The same name written again (ComfyUI reuses names after a clean-up) is a new file.
    write_output(folder, "aiko_00001_.png", age_s=10)
    assert len(register_new_outputs(registry, folder, None, logs.append).source_ids) == 1


def test_unmatched_file_with_several_projects_is_noted(tmp_path: Path, registry: Registry) -> None:
    with registry.session() as session:
        commands.add_project(session, "other", "Other")
    folder = tmp_path / "output"
    write_output(folder, "ComfyUI_00001_.png")
    logs: list[str] = []
    result = register_new_outputs(registry, folder, None, logs.append)
    assert result.source_ids == [] and result.unmatched == ["ComfyUI_00001_.png"]
    assert "LORA_PIPELINE_COMFYUI_PROJECT" in logs[-1]
    with registry.session() as session:
        (row,) = session.query(ComfyuiOutputFile).all()
        assert row.source_id is None and "no character or project" in row.note
    # Noted once: not reconsidered at every scan.
    assert register_new_outputs(registry, folder, None, logs.append).unmatched == []
    write_output(folder, "ComfyUI_00002_.png")
    assert len(register_new_outputs(registry, folder, "other", logs.append).source_ids) == 1
