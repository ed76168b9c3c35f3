"""The `vlm` caption strategy with the project's VLMs: the tiny LLaVA through caption_dataset and
through the captions asset, the trigger word's place, empty answers, errors, and configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from lora_pipeline.dataset.caption_strategies import (
    CAPTIONS_JSON,
    CaptionPlan,
    caption_dataset,
    load_caption_set,
)
from lora_pipeline.dataset.captions import CaptionError, caption_dataset_design
from lora_pipeline.dataset.quality import captions_complete
from lora_pipeline.dataset.versions import build_manifest, write_dataset_version
from lora_pipeline.defs.resources import ModelsResource
from lora_pipeline.media.store import DataRoot
from lora_pipeline.vision.captioner import Captioner, FunctionCaptioner, clean_caption
from lora_pipeline.vision.llava import LlavaCaptioner
from lora_pipeline.vision.ollama import OllamaCaptioner
from lora_pipeline.vision.tiny import build_tiny_llava
from lora_pipeline_tests.dataset import test_dataset_assets as assets
from lora_pipeline_tests.dataset.conftest import store_face_images
from lora_pipeline_tests.vision.fake_ollama import fake_ollama

DESIGN = "1girl, short teal hair, yellow raincoat"
PLAN = [("close", True, False), ("mid", False, True), ("far", True, True), ("mid", False, False)]
# The approved characters of the Dagster test, registry and all.
studio = assets.studio


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same folder as the vision tests' fixture: built once per session.
    return build_tiny_llava(tmp_path_factory.getbasetemp() / "models" / "tiny-llava")


@pytest.fixture
def version(data_root: DataRoot) -> tuple[Path, dict]:
    manifest = build_manifest("aiko", "aiko", store_face_images(data_root, PLAN))
    return write_dataset_version(data_root, manifest), manifest


def captioner_saying(text: str) -> Captioner:
    return FunctionCaptioner(lambda image: text, name="fixed")


def make_captioner() -> Captioner:
    return captioner_saying("a girl")


def caption_files(version_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in (version_dir / "captions").iterdir()}


def triggers_in(caption: str) -> list[str]:
    return re.findall(r"(?<!\w)aiko(?!\w)", caption, flags=re.IGNORECASE)


def test_tiny_llava_captions_through_caption_dataset(
    version: tuple[Path, dict], tiny_llava: Path
) -> None:
    version_dir, manifest = version
    captioner = LlavaCaptioner(str(tiny_llava), device="cpu", batch_size=3, max_new_tokens=24)
    result = caption_dataset(version_dir, manifest, CaptionPlan(("vlm",), captioner=captioner))
    assert result.captioner == captioner.name and result.strategy == "vlm"
    for name, image in result.images.items():
        text = image.vlm_caption
        assert text and text == clean_caption(text)
        # The trigger word opens the caption, once, whatever the model said.
        assert image.caption.startswith("aiko, ") and triggers_in(image.caption) == ["aiko"]
        vlm_words = [w for w in re.findall(r"\w+", text) if w.casefold() != "aiko"]
        assert vlm_words and vlm_words == re.findall(r"\w+", image.caption)[1:]
        caption_file = version_dir / "captions" / name.replace(".png", ".txt")
        assert caption_file.read_text() == image.caption
    assert captions_complete(version_dir, manifest).passed
    assert load_caption_set(version_dir, manifest) == result
    # Greedy decoding: captioning again, one image at a time, writes the same bytes.
    before = caption_files(version_dir)
    one_by_one = LlavaCaptioner(str(tiny_llava), device="cpu", batch_size=1, max_new_tokens=24)
    caption_dataset(version_dir, manifest, CaptionPlan(("vlm",), captioner=one_by_one))
    assert caption_files(version_dir) == before


def test_trigger_word_from_the_model_is_moved_to_the_front(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    captioner = captioner_saying("AIKO, a girl in the rain.\nAiko's umbrella; aikomi, aiko")
    plan = CaptionPlan(("design", "vlm"), design_prompt=DESIGN, captioner=captioner)
    result = caption_dataset(version_dir, manifest, plan)
    assert set(result.captions.values()) == {
        "aiko, 1girl, short teal hair, yellow raincoat, a girl in the rain, umbrella, aikomi"
    }
    # What the model said is kept as it said it (cleaned) in captions.json.
    image = result.images["aiko_0001.png"]
    assert image.vlm_caption == "AIKO, a girl in the rain, Aiko's umbrella, aikomi"


def test_an_empty_answer_falls_back_to_the_design_prompt(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    noise = captioner_saying("\ufffd\x00 \n aiko.")
    plan = CaptionPlan(("vlm",), design_prompt=f"aiko standing, {DESIGN}", captioner=noise)
    result = caption_dataset(version_dir, manifest, plan)
    assert set(result.captions.values()) == {
        "aiko, standing, 1girl, short teal hair, yellow raincoat"
    }
    assert result.images["aiko_0001.png"].vlm_caption == "aiko"
    # No design prompt either: the trigger word alone is still a valid caption.
    result = caption_dataset(version_dir, manifest, CaptionPlan(("vlm",), captioner=noise))
    assert set(result.captions.values()) == {"aiko"}
    assert captions_complete(version_dir, manifest).passed


def test_missing_vlm_is_one_clear_error(version: tuple[Path, dict]) -> None:
    version_dir, manifest = version
    with pytest.raises(CaptionError) as error:
        caption_dataset(version_dir, manifest, CaptionPlan(("design", "vlm"), design_prompt=DESIGN))
    message = str(error.value)
    assert "\n" not in message and "'vlm' caption strategy" in message
    for variable in ("LORA_PIPELINE_CAPTIONER", "LORA_PIPELINE_IDENTIFIER"):
        assert variable in message
    assert "llava:<folder or hub id>" in message and "ollama:<url>#<model>" in message
    assert not (version_dir / "captions").exists()


def test_a_corrupt_image_stops_captioning_and_keeps_the_captions(
    version: tuple[Path, dict],
) -> None:
    version_dir, manifest = version
    caption_dataset_design(version_dir, manifest, DESIGN)
    before = caption_files(version_dir)
    (version_dir / "images" / "aiko_0003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    seen: list[Image.Image] = []
    plan = CaptionPlan(("vlm",), captioner=FunctionCaptioner(lambda i: seen.append(i) or "x"))
    with pytest.raises(CaptionError, match=r"^cannot caption aiko_0003\.png: ") as error:
        caption_dataset(version_dir, manifest, plan)
    assert "\n" not in str(error.value)
    # Nothing half-written: the version's captions are the ones it had, all of them.
    assert caption_files(version_dir) == before
    assert seen == [] and captions_complete(version_dir, manifest).passed


def test_a_failing_vlm_names_the_images_and_keeps_the_captions(
    version: tuple[Path, dict],
) -> None:
    version_dir, manifest = version
    caption_dataset_design(version_dir, manifest, DESIGN)
    before = caption_files(version_dir)
    with fake_ollama() as server:
        server.fail_with = (500, '{"error": "llama runner process has terminated"}')
        plan = CaptionPlan(("vlm",), captioner=OllamaCaptioner(server.url, "llava:13b"))
        with pytest.raises(CaptionError) as error:
            caption_dataset(version_dir, manifest, plan)
    message = str(error.value)
    assert message.startswith("cannot caption aiko_0001.png to aiko_0004.png: Ollama at ")
    assert message.endswith("llama runner process has terminated") and "\n" not in message
    assert caption_files(version_dir) == before


def test_captioner_selection_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llava: Path
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORA_PIPELINE_DEVICE", "cpu")
    for name in ("CAPTIONER", "IDENTIFIER", "PROJECT_IDENTIFIERS"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    assert ModelsResource().runtime().captioner("demo") is None
    monkeypatch.setenv("LORA_PIPELINE_IDENTIFIER", "ollama:http://127.0.0.1:1#llava:13b")
    assert isinstance(ModelsResource().runtime().captioner("demo"), OllamaCaptioner)
    # The project's own LLaVA comes before the default Ollama model.
    projects = json.dumps({"demo": f"llava:{tiny_llava}", "other": "reference:/models/clip"})
    monkeypatch.setenv("LORA_PIPELINE_PROJECT_IDENTIFIERS", projects)
    chosen = ModelsResource().runtime().captioner("demo")
    assert isinstance(chosen, LlavaCaptioner) and chosen.device == "cpu"
    assert ModelsResource().runtime().captioner("demo") is chosen  # made once per process
    assert isinstance(ModelsResource().runtime().captioner("other"), OllamaCaptioner)
    # The captioner setting comes first of all.
    monkeypatch.setenv("LORA_PIPELINE_CAPTIONER", f"{__name__}:make_captioner")
    assert ModelsResource().runtime().captioner("demo").name == "fixed"


def test_captions_asset_uses_the_identifiers_llava(
    studio, monkeypatch: pytest.MonkeyPatch, tiny_llava: Path
) -> None:
    registry, root = studio
    monkeypatch.delenv("LORA_PIPELINE_CAPTIONER", raising=False)
    monkeypatch.setenv("LORA_PIPELINE_IDENTIFIER", f"llava:{tiny_llava}")
    monkeypatch.setenv("LORA_PIPELINE_DEVICE", "cpu")
    config = {"ops": {"captions": {"config": {"strategy": "design+vlm"}}}}
    result = assets.run(registry, root, ModelsResource(), ["approved_dataset", "captions"], config)
    assert result.success
    meta = assets.metadata(result, "captions")
    assert meta["strategy"] == "design+vlm" and meta["captioner"].startswith("llava:")
    assert meta["example"].startswith("aiko, 1girl, yellow raincoat, ")
    (captions_json,) = Path(root.root).rglob(CAPTIONS_JSON)
    data = json.loads(captions_json.read_text())
    assert data["captioner"] == meta["captioner"] and len(data["images"]) == 11
    assert all(image["vlm_caption"] for image in data["images"].values())
