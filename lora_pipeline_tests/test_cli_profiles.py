"""Generation profiles from the CLI, and what they change: `profile add|list|set`, `project set
--checkpoint`, then the checkpoint, workflow template and LoRA strength of the next generation
(the fake ComfyUI records the graph it is sent; local diffusers loads the profile's model) and
the checkpoint of the next training."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, Failure, Output, asset, materialize

from lora_pipeline.config import Settings
from lora_pipeline.defs import training as training_defs
from lora_pipeline.defs.partitions import CHARACTER_PARTITIONS_NAME, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.defs.training import trained_lora
from lora_pipeline.registry import commands
from lora_pipeline.registry.db import Registry
from lora_pipeline_tests import test_cli
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI
from lora_pipeline_tests.test_cli import one_error_line, run

cast = test_cli.cast  # the fixture: a home with project demo and character aiko

SHIPPED = json.loads(
    resources.files("lora_pipeline.generation").joinpath("workflows/image.json").read_text()
)


def renumbered(template: dict[str, Any], offset: int, denoise: float) -> dict[str, Any]:
    """The template with its node ids moved by `offset` and another denoise: a graph of only
    stock node types that is recognisably not the shipped one."""
    moved: dict[str, Any] = {}
    for node_id, node in copy.deepcopy(template).items():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + offset), value[1]]
        moved[str(int(node_id) + offset)] = node
    sampler = next(n for n in moved.values() if n["class_type"] == "KSampler")
    sampler["inputs"]["denoise"] = denoise
    return moved


def write_json(path: Path, value: object) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def profiles(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    code, out, _ = run(capsys, "profile", "list", "--json", *argv)
    assert code == 0, out
    return json.loads(out)


def studio_registry() -> Registry:
    return Registry(Settings.current().database_url)


def test_add_list_set_and_json(cast: Path, capsys, tmp_path: Path) -> None:
    assert profiles(capsys) == []
    checkpoint = tmp_path / "anything-v5.safetensors"
    checkpoint.write_bytes(b"")
    custom = renumbered(SHIPPED, 10, 0.7)
    code, out, _ = run(
        capsys,
        "profile",
        "add",
        "demo",
        "realism",
        "--checkpoint",
        str(checkpoint),
        "--workflow",
        write_json(tmp_path / "wf.json", custom),
        "--lora-strength",
        "0.6",
    )
    assert code == 0 and "profile realism of project demo added — the project's default" in out
    assert "anything-v5.safetensors  (" in out and "custom, 8 nodes" in out
    code, out, _ = run(capsys, "profile", "add", "demo", "anime")
    assert code == 0 and "default" not in out.splitlines()[0]
    assert "(base model: " in out and "(shipped)" in out
    (realism,) = [p for p in profiles(capsys, "--project", "demo") if p["name"] == "realism"]
    assert realism == {
        "project": "demo",
        "name": "realism",
        "default": True,
        "checkpoint": str(checkpoint.resolve()),
        "checkpoint_name": "anything-v5.safetensors",
        "lora_strength": 0.6,
        "workflow_template": custom,
        "video_workflow_template": None,
    }
    code, out, _ = run(
        capsys, "profile", "set", "demo", "anime", "--default", "--lora-strength", "1"
    )
    assert code == 0 and "set lora_strength, default" in out and "the project's default" in out
    assert {p["name"]: p["default"] for p in profiles(capsys)} == {"anime": True, "realism": False}
    code, out, _ = run(capsys, "profile", "set", "demo", "realism", "--unset", "workflow")
    assert code == 0 and "(shipped)" in out
    code, out, _ = run(capsys, "profile", "list")
    assert "demo / anime  (default)" in out and "demo / realism\n" in out


def test_project_set_checkpoint_is_the_default_profiles(cast: Path, capsys, tmp_path) -> None:
    first, second = tmp_path / "a.safetensors", tmp_path / "b"
    first.write_bytes(b"")
    second.mkdir()  # a diffusers folder
    code, out, _ = run(capsys, "project", "set", "demo", "--checkpoint", str(first))
    assert code == 0 and "(profile default; used from the next run on)" in out
    code, out, _ = run(
        capsys, "project", "set", "demo", "--checkpoint", str(second), "--min-identity", "0.5"
    )
    assert code == 0 and "set min_identity" in out
    (profile,) = profiles(capsys)
    assert (profile["name"], profile["default"], profile["checkpoint"]) == (
        "default",
        True,
        str(second.resolve()),
    )


def _advanced_sampler() -> dict[str, Any]:
    """A valid graph whose sampler is KSamplerAdvanced, which the pipeline does not fill."""
    template = copy.deepcopy(SHIPPED)
    template["6"]["class_type"] = "KSamplerAdvanced"
    return template


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "add", "nope", "x"], "unknown project 'nope'"),
        (["profile", "add", "demo", "Bad Name"], "invalid profile name"),
        (["profile", "add", "demo", "x", "--checkpoint", "/nope/x.safetensors"], "does not exist"),
        (["profile", "add", "demo", "x", "--workflow", "{missing}"], "cannot read"),
        (["profile", "add", "demo", "x", "--workflow", "{notjson}"], "is not JSON"),
        (["profile", "add", "demo", "x", "--workflow", "{ui}"], "UI format"),
        (["profile", "add", "demo", "x", "--workflow", "{nosampler}"], "no KSampler node"),
        (["profile", "add", "demo", "x", "--workflow", "{nolora}"], "no LoraLoader node"),
        (["profile", "add", "demo", "x", "--lora-strength", "strong"], "--lora-strength"),
        (["profile", "add", "demo", "x", "--lora-strength", "500"], "--lora-strength"),
        (["profile", "set", "demo", "nope", "--default"], "has no generation profile 'nope'"),
        (["profile", "set", "demo", "realism"], "nothing to change"),
        (["profile", "set", "demo", "realism", "--unset", "sampler"], "cannot unset 'sampler'"),
        (["profile", "list", "--project", "nope"], "unknown project 'nope'"),
        (["project", "set", "demo", "--checkpoint", "./missing.ckpt"], "does not exist"),
        (["project", "set", "nope", "--checkpoint", "some/hub-id"], "unknown project 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    cast: Path, capsys, tmp_path: Path, argv: list[str], message: str
) -> None:
    assert run(capsys, "profile", "add", "demo", "realism")[0] == 0
    (tmp_path / "bad.json").write_text("{not json")
    files = {
        "missing": str(tmp_path / "missing.json"),
        "notjson": str(tmp_path / "bad.json"),
        "ui": write_json(tmp_path / "ui.json", {"nodes": [], "links": [], "version": 0.4}),
        "nosampler": write_json(tmp_path / "ns.json", _advanced_sampler()),
        "nolora": write_json(tmp_path / "nl.json", _without_lora()),
    }
    code, _, err = run(capsys, *[a.format(**files) for a in argv])
    assert code == 2 and message in one_error_line(err)


def _without_lora() -> dict[str, Any]:
    """The shipped template with its LoraLoader bypassed: valid, but no LoRA could be applied."""
    template = copy.deepcopy(SHIPPED)
    del template["2"]
    for node in template.values():
        for name, value in node["inputs"].items():
            if value == ["2", 0]:
                node["inputs"][name] = ["1", 0]
            elif value == ["2", 1]:
                node["inputs"][name] = ["1", 1]
    return template


# --- what a profile changes ------------------------------------------------------------------


def active_release(file: str, checkpoint: str) -> None:
    """An active release of aiko trained on `checkpoint`, evaluated as passing."""
    with studio_registry().session() as session:
        character = commands.get_character(session, "aiko")
        row = commands.register_lora_release(
            session, character.id, None, f"loras/aiko/{file}", f"{7:064x}", checkpoint, {}
        )
        commands.record_eval(session, row.id, {}, "evals/grid.png", [], {}, "pass")
        commands.set_release_status(session, row.id, "active")


def sent(fake: FakeComfyUI, class_type: str) -> list[tuple[str, dict[str, Any]]]:
    """(node id, inputs) of the nodes of a class in the last graph the server was sent."""
    prompt = fake.prompts[-1]["prompt"]
    return [(i, n["inputs"]) for i, n in prompt.items() if n["class_type"] == class_type]


def test_editing_a_profile_changes_the_next_comfyui_request(
    cast: Path, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other_sd15.safetensors"
    other.write_bytes(b"")
    with FakeComfyUI() as fake:
        fake.checkpoints.append("other_sd15.safetensors")
        fake.loras.append("aiko-look.safetensors")
        monkeypatch.setenv("LORA_PIPELINE_COMFYUI_URL", fake.base_url)
        monkeypatch.setenv("LORA_PIPELINE_COMFYUI_CHECKPOINT", "random_sd15.safetensors")
        generate = ("generate", "aiko", "--count", "1", "--now")

        assert run(capsys, *generate)[0] == 0  # no profile: the settings' checkpoint, shipped graph
        ((loader_id, loader),) = sent(fake, "CheckpointLoaderSimple")
        assert (loader_id, loader["ckpt_name"]) == ("1", "random_sd15.safetensors")
        assert sent(fake, "LoraLoader") == []

        active_release("aiko-look.safetensors", "other_sd15")
        custom = write_json(tmp_path / "look.json", renumbered(SHIPPED, 20, 0.7))
        argv = ["--checkpoint", str(other), "--workflow", custom, "--lora-strength", "0.55"]
        assert run(capsys, "profile", "add", "demo", "look", *argv)[0] == 0
        assert run(capsys, *generate)[0] == 0
        ((loader_id, loader),) = sent(fake, "CheckpointLoaderSimple")
        assert (loader_id, loader["ckpt_name"]) == ("21", "other_sd15.safetensors")
        ((_, sampler),) = sent(fake, "KSampler")
        assert sampler["denoise"] == 0.7 and sampler["model"] == ["22", 0]
        ((_, lora),) = sent(fake, "LoraLoader")
        assert (lora["lora_name"], lora["strength_model"]) == ("aiko-look.safetensors", 0.55)

        assert run(capsys, "profile", "set", "demo", "look", "--unset", "workflow")[0] == 0
        assert run(capsys, *generate)[0] == 0
        ((loader_id, loader),) = sent(fake, "CheckpointLoaderSimple")
        assert (loader_id, loader["ckpt_name"]) == ("1", "other_sd15.safetensors")
        assert sent(fake, "KSampler")[0][1]["denoise"] == 1.0

        assert run(capsys, "profile", "set", "demo", "look", "--unset", "checkpoint")[0] == 0
        assert run(capsys, *generate)[0] == 0
        assert sent(fake, "CheckpointLoaderSimple")[0][1]["ckpt_name"] == "random_sd15.safetensors"
        assert sent(fake, "LoraLoader") == []  # the release is of the other checkpoint


def test_local_generation_loads_the_profiles_checkpoint(
    cast: Path, capsys, tiny_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_PIPELINE_BASE_MODEL", str(cast / "no-such-model"))
    code, _, err = run(capsys, "generate", "aiko", "--count", "1", "--now")
    assert code == 2 and "no-such-model" in one_error_line(err)
    assert run(capsys, "project", "set", "demo", "--checkpoint", str(tiny_sd))[0] == 0
    code, out, _ = run(capsys, "generate", "aiko", "--count", "1", "--now")
    assert code == 0 and "new pending image(s) of aiko" in out


def test_editing_a_profile_changes_the_next_trainings_checkpoint(
    cast: Path, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained_on: list[str] = []

    def plan(_registry: object, _root: object, _dataset: object, _split: str, config, **_):
        # Where the training would start: enough to know its checkpoint, without training.
        trained_on.append(config.base_model)
        raise Failure(description="stopped before training")

    monkeypatch.setattr(training_defs, "plan_character_training", plan)

    @asset(name="shot_splits", partitions_def=character_partitions)
    def shot_splits() -> Output:
        return Output({"dataset": None, "split_relpath": "unused"})

    def train() -> None:
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(CHARACTER_PARTITIONS_NAME, ["aiko"])
        result = materialize(
            [shot_splits, trained_lora],
            instance=instance,
            partition_key="aiko",
            resources={
                "registry": RegistryResource(),
                "data_root": DataRootResource(path=str(tmp_path / "data")),
                "models": ModelsResource(device="cpu"),
            },
            raise_on_error=False,
        )
        assert not result.success

    studio_model = Settings.current().base_model
    train()
    checkpoint = tmp_path / "anything-v5.safetensors"
    checkpoint.write_bytes(b"")
    assert run(capsys, "project", "set", "demo", "--checkpoint", str(checkpoint))[0] == 0
    train()
    assert run(capsys, "profile", "set", "demo", "default", "--unset", "checkpoint")[0] == 0
    train()
    assert trained_on == [studio_model, str(checkpoint.resolve()), studio_model]


def test_a_profile_says_which_shipped_video_template(cast: Path, capsys) -> None:
    code, out, _ = run(capsys, "profile", "add", "demo", "clips", "--video-workflow", "stock")
    assert code == 0 and "shipped stock" in out, out
    (profile,) = profiles(capsys)
    stored = profile["video_workflow_template"]
    assert {n["class_type"] for n in stored.values()} >= {"WanImageToVideo", "SaveVideo"}
    code, out, _ = run(capsys, "profile", "set", "demo", "clips", "--video-workflow", "animatediff")
    assert code == 0 and "shipped animatediff" in out, out
    (profile,) = profiles(capsys)
    assert "ADE_AnimateDiffLoaderGen1" in json.dumps(profile["video_workflow_template"])
    code, out, _ = run(capsys, "profile", "set", "demo", "clips", "--unset", "video-workflow")
    assert code == 0 and profiles(capsys)[0]["video_workflow_template"] is None
