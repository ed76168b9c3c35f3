"""approved_dataset → captions → shot_splits in Dagster, with the tiny tagger and detector.

The registry holds approved images of one character; the models are configured through
ModelsResource; asset checks, metadata and files are read back from the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, materialize

from lora_pipeline.config import Settings
from lora_pipeline.dataset.service import approved_fingerprint, training_examples
from lora_pipeline.definitions import ASSETS
from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline_tests.dataset.conftest import face_image

DATASET_ASSETS = ["approved_dataset", "captions", "shot_splits"]
# (shot, smile, outdoors, provenance tags) of the approved images
IMAGES = [
    ("close", True, False, ["style:anime"]),
    ("close", False, True, ["style:anime"]),
    ("close", True, True, []),
    ("mid", False, False, ["style:anime"]),
    ("mid", True, False, []),
    ("mid", False, True, ["style:anime"]),
    ("mid", True, True, []),
    ("far", False, False, ["style:anime"]),
    ("far", False, False, []),  # the same picture as the one before: a near-duplicate
    ("far", False, True, []),
    ("unknown", True, False, []),
]


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Registry, DataRoot]]:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("CAPTION_STRATEGY", "TAXONOMY", "TAG_BLACKLIST", "RESOLUTION_GATE"):
        monkeypatch.delenv(f"LORA_PIPELINE_{name}", raising=False)
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry, root = Registry(url), DataRoot(tmp_path / "data")
    with registry.session() as session:
        commands.add_project(session, "demo", "Demo")
        character = commands.add_character(
            session, "demo", "aiko", "Aiko Tanaka", design_prompt="1girl, yellow raincoat"
        )
        for index, (shot, smile, outdoors, tags) in enumerate(IMAGES, start=1):
            stored = root.put_image(face_image(index, shot, smile=smile, outdoors=outdoors))
            image, _ = commands.add_image(
                session,
                character.id,
                stored.sha256,
                stored.relpath,
                stored.width,
                stored.height,
                "generated",
                provenance={"tags": tags},
            )
            commands.approve_image(session, image.id, reviewer="test")
    yield registry, root
    registry.dispose()


def run(
    registry: Registry,
    root: DataRoot,
    models: ModelsResource,
    selection: list[str] = DATASET_ASSETS,
    config: dict | None = None,
):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, ["aiko"])
    return materialize(
        ASSETS,
        selection=selection,
        partition_key="aiko",
        instance=instance,
        resources={
            "registry": RegistryResource(database_url=registry.url),
            "data_root": DataRootResource(path=str(root.root)),
            "models": models,
        },
        run_config=config or {},
        raise_on_error=False,
    )


def checks(result) -> dict[str, tuple[bool, AssetCheckSeverity]]:
    return {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}


def metadata(result, asset: str) -> dict:
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey(asset)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_dataset_stages_with_tagger_and_face_detector(
    studio, tiny_face_model: Path, tiny_tagger_model: Path
) -> None:
    registry, root = studio
    models = ModelsResource(
        face_detector=str(tiny_face_model),
        tagger=str(tiny_tagger_model),
        base_model="/models/tiny-sd",
    )
    result = run(registry, root, models)
    assert result.success
    assert checks(result) == {
        "enough_approved_images": (True, AssetCheckSeverity.ERROR),
        "image_files_intact": (True, AssetCheckSeverity.ERROR),
        "images_readable": (True, AssetCheckSeverity.ERROR),
        # 64-px images: a warning by default, so the run went on.
        "minimum_resolution": (False, AssetCheckSeverity.WARN),
        # Images with the same framing and colours are near-duplicates: also a warning.
        "no_near_duplicates": (False, AssetCheckSeverity.WARN),
        "captions_complete": (True, AssetCheckSeverity.ERROR),
        # Only 2 far images would warn; 3 close, 4 mid, 3 far is balanced, 1 unknown is not.
        "shot_balance": (False, AssetCheckSeverity.WARN),
    }
    version_hash, count = approved_fingerprint(registry, "aiko")
    dataset = metadata(result, "approved_dataset")
    assert (dataset["version_hash"], dataset["image_count"]) == (version_hash, count)
    captions = metadata(result, "captions")
    assert captions["strategy"] == "design+tags"
    assert captions["tagger"] == "wd14:model.onnx"
    assert captions["absorbed_tags"] == ["1girl", "teal hair"]
    split = metadata(result, "shot_splits")
    assert split["shot_distribution"] == {"close": 3, "mid": 4, "far": 3, "unknown": 1}
    assert split["face_detector"] == "onnx:faces.onnx"
    assert split["num_repeats"] == {"close": 1, "mid": 1, "far": 1, "unknown": 1}
    assert split["training_defaults"]["epochs"] == 20
    assert split["warnings"] == ["1 image(s) had no detectable face (unknown)"]
    out = Path(split["dataset_dir"])
    info = json.loads((out / "metadata.json").read_text())
    assert (info["person"], info["total_images"]) == ("Aiko Tanaka", 11)
    assert (
        json.loads((out / "kohya_config.json").read_text())["model_arguments"][
            "pretrained_model_name_or_path"
        ]
        == "/models/tiny-sd"
    )
    examples = training_examples(out)
    assert len(examples) == 11
    assert examples[0][1].startswith("aiko, headshot, 1girl, yellow raincoat")


def test_without_models_design_captions_and_unknown_shots(studio) -> None:
    registry, root = studio
    result = run(registry, root, ModelsResource())
    assert result.success
    assert metadata(result, "captions")["strategy"] == "design"
    split = metadata(result, "shot_splits")
    assert split["face_detector"] == "none"
    assert split["shot_distribution"] == {"close": 0, "mid": 0, "far": 0, "unknown": 11}
    assert checks(result)["shot_balance"] == (True, AssetCheckSeverity.WARN)


def test_selection_provenance_and_a_blocking_resolution_gate(studio) -> None:
    registry, root = studio
    config = {
        "ops": {
            "approved_dataset": {
                "config": {
                    "tags": ["style:anime"],
                    "provenance_author": "Studio A",
                    "provenance_url": "https://example.com/aiko",
                    "resolution_gate": "block",
                }
            }
        }
    }
    result = run(registry, root, ModelsResource(), config=config)
    # Blocking checks failed with ERROR: the step fails and nothing downstream runs.
    assert not result.success
    found = checks(result)
    assert found["enough_approved_images"] == (False, AssetCheckSeverity.ERROR)  # 5 images
    assert found["minimum_resolution"] == (False, AssetCheckSeverity.ERROR)
    assert "captions_complete" not in found  # blocked: captions never ran
    dataset = metadata(result, "approved_dataset")
    assert dataset["image_count"] == 5
    assert dataset["provenance"] == {
        "author": "Studio A",
        "url": "https://example.com/aiko",
        "selection": {"status": "approved", "tags": ["style:anime"], "match": "all"},
    }
    with registry.session() as session:
        character = commands.get_character(session, "aiko")
        version = queries.latest_dataset_version(session, character.id)
        assert version.manifest["provenance"]["author"] == "Studio A"
        assert version.image_count == 5


def test_models_and_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_face_model: Path, tiny_tagger_model: Path
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORA_PIPELINE_FACE_DETECTOR", str(tiny_face_model))
    monkeypatch.setenv("LORA_PIPELINE_FACE_THRESHOLD", "0.8")
    monkeypatch.setenv("LORA_PIPELINE_TAGGER", str(tiny_tagger_model))
    monkeypatch.setenv("LORA_PIPELINE_TAG_BLACKLIST", "watermark, signature ,")
    monkeypatch.setenv("LORA_PIPELINE_MIN_SHORT_SIDE", "768")
    models = ModelsResource().runtime()
    detector = models.face_detector()
    assert detector.name == "onnx:faces.onnx" and detector.score_threshold == 0.8
    assert models.face_detector() is detector  # loaded once per process
    assert models.tagger().name == "wd14:model.onnx"
    assert models.captioner() is None
    settings = Settings.from_env()
    assert settings.tag_blacklist == ("watermark", "signature")
    assert (settings.min_short_side, settings.resolution_gate) == (768, "warn")
    monkeypatch.setenv("LORA_PIPELINE_RESOLUTION_GATE", "sometimes")
    with pytest.raises(ValueError, match=r"^LORA_PIPELINE_RESOLUTION_GATE: .*'warn' or 'block'"):
        Settings.from_env()
    monkeypatch.setenv("LORA_PIPELINE_RESOLUTION_GATE", "BLOCK")
    monkeypatch.setenv("LORA_PIPELINE_MIN_SHORT_SIDE", "big")
    with pytest.raises(ValueError, match=r"^LORA_PIPELINE_MIN_SHORT_SIDE: .*integer"):
        Settings.from_env()
