"""evaluate_release end to end on tiny models: best epoch, scores, gate, record, model card."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.evaluation.model_card import MODEL_CARD_FIELDS
from lora_pipeline.evaluation.service import (
    EvalScorers,
    EvaluationError,
    evaluate_release,
    write_model_card,
)
from lora_pipeline.generation.backends import LocalImageBackend
from lora_pipeline.generation.comfyui import copy_to_comfyui
from lora_pipeline.generation.local import DiffusersGenerator, GenerationRequest, LoraSpec
from lora_pipeline.media.store import DataRoot, sha256_file
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.errors import GateError
from lora_pipeline.registry.models import Eval, LoraRelease
from lora_pipeline.vision.reference import ReferenceIdentifier
from lora_pipeline.vision.tiny import build_tiny_clip, build_tiny_clip_vision
from lora_pipeline_tests.generation.tiny_assets import write_random_lora

LORA = "loras/aiko/aiko-0123.safetensors"
EPOCH_1 = "loras/aiko/epochs/aiko-0123-000001.safetensors"


@pytest.fixture(scope="module")
def scorers(tmp_path_factory: pytest.TempPathFactory) -> EvalScorers:
    folder = tmp_path_factory.mktemp("eval-models")
    vision = build_tiny_clip_vision(folder / "clip-vision")
    embedder = ReferenceIdentifier(str(vision), lambda _slug: [], device="cpu")
    return EvalScorers(embedder=embedder, clip_model=str(build_tiny_clip(folder / "clip")))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    yield registry
    registry.dispose()


def setup_release(
    registry: Registry, root: DataRoot, final: Path, epoch_1: Path, **settings: object
) -> int:
    """Aiko with two approved images and a release of `final` that also saved `epoch_1`."""
    for relpath, source in ((LORA, final), (EPOCH_1, epoch_1)):
        root.path(relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root.path(relpath))
    with registry.session() as session:
        commands.add_project(session, "show", "The Show")
        commands.update_project_settings(
            session, "show", eval_prompts=["portrait", "full body"], eval_seeds=[1], **settings
        )
        aiko = commands.add_character(session, "show", "aiko", "Aiko", steps=2, width=64, height=64)
        for colour in ("teal", "navy"):
            stored = root.put_image(Image.new("RGB", (32, 32), colour))
            image, _ = commands.add_image(
                session, aiko.id, stored.sha256, stored.relpath, 32, 32, "upload"
            )
            commands.approve_image(session, image.id, "tester")
        release = commands.register_lora_release(
            session,
            aiko.id,
            None,
            LORA,
            sha256_file(root.path(LORA)),
            "tiny-sd",
            {"epochs": 2, "epoch_files": [EPOCH_1], "rank": 4},
        )
        return release.id


def test_the_best_epoch_is_released_and_its_grid_scored_and_recorded(
    tmp_path: Path,
    registry: Registry,
    generator: DiffusersGenerator,
    loras: dict[str, Path],
    scorers: EvalScorers,
) -> None:
    root = DataRoot(tmp_path / "data")
    # Epoch 1 learnt something; the final epoch's LoRA changes nothing (fails min_lora_effect).
    release_id = setup_release(registry, root, final=loras["zero"], epoch_1=loras["random"])
    backend = LocalImageBackend(generator)
    ref, result = evaluate_release(registry, root, backend, release_id, scorers)

    assert ref.best_epoch == 1 and ref.verdict == "pass", ref
    assert result.col_labels == ["no LoRA", "LoRA 0.6", "LoRA 0.8", "LoRA 1"]
    assert len(result.row_labels) == 2  # the project's two prompts × one seed
    assert set(ref.scores) == {"lora_effect", "identity", "clip_score", "quality"}
    assert all(isinstance(v, float) for v in ref.scores.values())
    with registry.session() as session:
        release = session.get(LoraRelease, release_id)
        assert release is not None and release.path == EPOCH_1
        assert release.sha256 == sha256_file(loras["random"])
        row = session.get(Eval, ref.eval_id)
        assert row is not None and row.verdict == "pass"
        assert set(row.scores["per_epoch"]) == {"1", "2"}
        assert row.scores["per_epoch"]["2"]["lora_effect"] == 0.0
        assert len(row.image_paths) == 8 and all(root.path(p).is_file() for p in row.image_paths)
    saved = json.loads(root.path(f"evals/aiko/{release_id}/1/eval.json").read_text())
    assert saved["scores"]["best_epoch"] == 1 and saved["settings"]["lora_file"] == EPOCH_1
    assert root.path(ref.grid_relpath).is_file()

    # Scores on tiny models are deterministic: evaluating again compares the same two epochs
    # (the trainer's final file is remembered) and gives the same numbers, in its own folder.
    again, _ = evaluate_release(registry, root, backend, release_id, scorers)
    assert again.scores == ref.scores and again.eval_id != ref.eval_id
    assert again.best_epoch == 1 and again.grid_relpath != ref.grid_relpath
    with registry.session() as session:
        second = session.get(Eval, again.eval_id)
        assert second is not None and second.scores["per_epoch"] == row.scores["per_epoch"]
    assert root.path(ref.grid_relpath).is_file()  # the first record's images are kept


def test_each_rendered_file_is_staged_for_comfyui_first(
    tmp_path: Path, registry: Registry, generator: DiffusersGenerator, loras: dict[str, Path]
) -> None:
    root = DataRoot(tmp_path / "data")
    release_id = setup_release(registry, root, final=loras["zero"], epoch_1=loras["random"])
    folder = tmp_path / "comfyui" / "loras"
    staged: list[str] = []

    def stage(path: Path) -> None:
        assert path.is_file()
        staged.append(path.name)
        copy_to_comfyui(path, str(folder))  # a str, as the settings give it

    evaluate_release(registry, root, LocalImageBackend(generator), release_id, stage_lora=stage)
    assert staged[:2] == ["aiko-0123-000001.safetensors", "aiko-0123.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(staged))


def test_a_release_is_evaluated_on_its_own_checkpoint_under_the_active_baseline(
    tmp_path: Path,
    registry: Registry,
    generator: DiffusersGenerator,
    loras: dict[str, Path],
    tiny_sd: Path,
) -> None:
    root = DataRoot(tmp_path / "data")
    release_id = setup_release(registry, root, final=loras["random"], epoch_1=loras["random"])
    other = LocalImageBackend(generator)
    other.checkpoint = "/models/anything-v5.safetensors"
    with pytest.raises(EvaluationError, match="trained on checkpoint 'tiny-sd'.*'anything-v5'"):
        evaluate_release(registry, root, other, release_id)

    root.path("loras/shared/style.safetensors").parent.mkdir(parents=True)
    write_random_lora(tiny_sd, root.path("loras/shared/style.safetensors"), seed=9)
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        baseline = commands.register_lora_release(
            session,
            aiko.id,
            None,
            "loras/shared/style.safetensors",
            "b" * 64,
            "tiny-sd",
            {},
            scope="baseline",
        )
        commands.record_eval(session, baseline.id, {}, "evals/b.png", [], {}, "pass")
        commands.set_release_status(session, baseline.id, "active")
    _, result = evaluate_release(registry, root, LocalImageBackend(generator), release_id)
    first = result.cells[0]
    assert first.strength == 0
    request = GenerationRequest(
        prompt=first.prompt, seed=first.seed, steps=2, width=64, height=64, cfg=7.0
    )
    with_baseline = generator.generate(request, LoraSpec(root.path(baseline.path), 0.8))
    assert np.array_equal(np.asarray(first.image), np.asarray(with_baseline))
    assert not np.array_equal(np.asarray(first.image), np.asarray(generator.generate(request)))


def test_the_gate_blocks_activation_below_the_threshold(
    tmp_path: Path,
    registry: Registry,
    generator: DiffusersGenerator,
    loras: dict[str, Path],
    scorers: EvalScorers,
) -> None:
    root = DataRoot(tmp_path / "data")
    release_id = setup_release(
        registry, root, final=loras["random"], epoch_1=loras["random"], min_identity=1.0
    )
    backend = LocalImageBackend(generator)
    ref, _ = evaluate_release(registry, root, backend, release_id, scorers)
    assert ref.verdict == "fail"
    assert ref.gate_reasons and ref.gate_reasons[0].startswith("identity ")
    with registry.session() as session, pytest.raises(GateError, match="identity"):
        commands.set_release_status(session, release_id, "active")
    with registry.session() as session:
        commands.update_project_settings(session, "show", min_identity=None)
    ref, _ = evaluate_release(registry, root, backend, release_id, scorers)
    assert ref.verdict == "pass"
    with registry.session() as session:
        commands.set_release_status(session, release_id, "active")
        assert queries.active_release(session, 1, "tiny-sd") is not None


def test_the_model_card_lists_every_field_and_follows_the_status(
    tmp_path: Path,
    registry: Registry,
    generator: DiffusersGenerator,
    loras: dict[str, Path],
) -> None:
    root = DataRoot(tmp_path / "data")
    release_id = setup_release(
        registry, root, final=loras["random"], epoch_1=loras["random"], licence="studio-internal"
    )
    ref, _ = evaluate_release(registry, root, LocalImageBackend(generator), release_id)
    card = root.path(ref.model_card_relpath)
    assert card == root.path("loras/aiko/aiko-0123.model-card.md")
    text = card.read_text()
    for name in MODEL_CARD_FIELDS:
        assert name in text, name
    assert "studio-internal" in text and "aiko" in text and "a fresh LoRA" in text
    # The grid is linked relative to the card, so the card renders where it lies.
    assert f"](<../../evals/aiko/{release_id}/1/grid.png>)" in text
    assert (card.parent / f"../../evals/aiko/{release_id}/1/grid.png").resolve().is_file()
    assert "candidate" in text
    # No identity or CLIP model: nothing measured the character, so the gate is unverified
    # and approving it takes a reviewer's override, which the card then shows.
    assert ref.verdict == "unverified" and "**unverified**" in text
    with registry.session() as session:
        commands.set_release_status(
            session, release_id, "approved", override_reason="checked by eye", reviewer="mika"
        )
    text = write_model_card(registry, root, release_id).read_text()
    assert "approved" in text and "**Gate overridden** by mika on " in text
    assert text.rstrip().count("checked by eye") == 1
