"""ComfyUIImageBackend / ComfyUIVideoBackend against the fake ComfyUI server."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lora_pipeline.generation.backends import (
    ComfyUIImageBackend,
    ComfyUIVideoBackend,
    comfyui_lora_name,
)
from lora_pipeline.generation.comfyui import (
    ComfyUIClient,
    ComfyUIProgress,
    ComfyUITimeoutError,
    ComfyUIValidationError,
)
from lora_pipeline.generation.local import GenerationRequest, LoraSpec
from lora_pipeline.generation.service import GenerationPlan, generate_for_character
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI

CHECKPOINT = "random_sd15.safetensors"
REQUEST = GenerationRequest(
    prompt="aiko_char, teal hair",
    negative_prompt="blurry",
    seed=43,
    steps=3,
    cfg=6.0,
    sampler="dpmpp_2m",
    scheduler="karras",
    width=64,
    height=48,
)
# Released LoRAs live in the data root and are copied into ComfyUI's loras folder by name.
AIKO_LORA = LoraSpec(Path("/data/loras/aiko/aiko-0123abcd.safetensors"), strength=0.75)


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        server.loras.append("aiko-0123abcd.safetensors")
        yield server


@pytest.fixture
def client(fake: FakeComfyUI) -> Iterator[ComfyUIClient]:
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as comfy:
        yield comfy


def received(fake: FakeComfyUI, class_type: str) -> list[dict[str, Any]]:
    """The inputs of the nodes of a class in the last graph the server was sent."""
    prompt = fake.prompts[-1]["prompt"]
    return [node["inputs"] for node in prompt.values() if node["class_type"] == class_type]


def test_generate_injects_the_lora_and_reports_progress(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    events: list[ComfyUIProgress] = []
    queued: list[str] = []
    backend = ComfyUIImageBackend(
        client,
        CHECKPOINT,
        AIKO_LORA,
        filename_prefix="aiko",
        on_progress=events.append,
        on_queued=queued.append,
    )
    image = backend.generate(REQUEST)
    assert (image.size, image.mode) == ((64, 48), "RGB")
    (lora,) = received(fake, "LoraLoader")
    assert (lora["lora_name"], lora["strength_model"], lora["strength_clip"]) == (
        "aiko-0123abcd.safetensors",
        0.75,
        0.75,
    )
    (sampler,) = received(fake, "KSampler")
    assert sampler["model"] == ["2", 0]  # through the LoRA
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (43, 3, 6.0)
    assert (sampler["sampler_name"], sampler["scheduler"]) == ("dpmpp_2m", "karras")
    assert received(fake, "SaveImage")[0]["filename_prefix"] == "aiko"
    assert [(e.value, e.maximum) for e in events] == [(1, 3), (2, 3), (3, 3)]
    assert queued == [backend.last_prompt_id]
    assert fake.history_of(queued[0]) is not None
    assert ("output", "", "aiko_00001_.png") in fake.files


def test_without_a_lora_the_graph_has_no_lora_loader(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    backend = ComfyUIImageBackend(client, CHECKPOINT, filename_prefix="aiko")
    plain = np.asarray(backend.generate(REQUEST))
    assert received(fake, "LoraLoader") == []
    assert received(fake, "KSampler")[0]["model"] == ["1", 0]
    assert {tuple(t["clip"]) for t in received(fake, "CLIPTextEncode")} == {("1", 1)}
    # A LoRA at strength 0 is no LoRA; a LoRA given to generate() wins over the backend's.
    backend.generate(REQUEST, replace(AIKO_LORA, strength=0.0))
    assert received(fake, "LoraLoader") == []
    with_lora = np.asarray(backend.generate(REQUEST, AIKO_LORA))
    assert received(fake, "LoraLoader")[0]["lora_name"] == "aiko-0123abcd.safetensors"
    assert not np.array_equal(plain, with_lora)
    assert np.array_equal(plain, np.asarray(backend.generate(REQUEST)))
    assert not np.array_equal(plain, np.asarray(backend.generate(replace(REQUEST, seed=44))))


def test_a_lora_comfyui_does_not_have_is_a_readable_refusal(client: ComfyUIClient) -> None:
    missing = LoraSpec(Path("/data/loras/kenji/kenji-99.safetensors"))
    backend = ComfyUIImageBackend(client, CHECKPOINT, missing, filename_prefix="kenji")
    with pytest.raises(ComfyUIValidationError, match=r"node 2 \(LoraLoader\): Value not in list"):
        backend.generate(REQUEST)


def test_timeout_cancels_the_prompt_in_comfyui(fake: FakeComfyUI, client: ComfyUIClient) -> None:
    fake.stuck = True
    backend = ComfyUIImageBackend(client, CHECKPOINT, timeout=0.3)
    with pytest.raises(ComfyUITimeoutError) as raised:
        backend.generate(REQUEST)
    assert fake.interrupts == [raised.value.prompt_id]
    assert fake.deleted == [raised.value.prompt_id]


def test_lora_names_are_comfyui_names() -> None:
    assert comfyui_lora_name(AIKO_LORA) == "aiko-0123abcd.safetensors"
    assert comfyui_lora_name(LoraSpec(Path("characters/aiko.safetensors"))) == (
        "characters/aiko.safetensors"
    )


def test_video_backend_renders_a_capped_clip(fake: FakeComfyUI, client: ComfyUIClient) -> None:
    backend = ComfyUIVideoBackend(client, CHECKPOINT, AIKO_LORA, filename_prefix="aiko")
    clip = backend.render(replace(REQUEST, width=96, height=128, steps=2), frames=40)
    (latent,) = received(fake, "EmptyLatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (96, 128, 16)
    assert received(fake, "ADE_AnimateDiffLoaderGen1")[0]["model"] == ["2", 0]
    assert clip.filename == "aiko_00001_.mp4"
    assert clip.data[4:8] == b"ftyp"  # an MP4 file


def test_generation_service_runs_on_comfyui(
    tmp_path: Path, fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "The Show", style_prompt="anime style")
        commands.add_character(
            session, "show", "aiko", "Aiko", design_prompt="teal hair", steps=2, width=64, height=64
        )
    backend = ComfyUIImageBackend(client, CHECKPOINT, AIKO_LORA, filename_prefix="aiko")
    root = DataRoot(tmp_path / "data")
    outcome = generate_for_character(
        registry, root, backend, "aiko", GenerationPlan(count=2, seed=7), lambda _: None
    )
    assert len(outcome.image_ids) == 2 and outcome.failed_jobs == []
    with registry.session() as session:
        jobs = queries.generation_jobs(session)
        assert {(job.status, job.backend) for job in jobs} == {("completed", "comfyui")}
    assert [p["prompt"]["6"]["inputs"]["seed"] for p in fake.prompts] == [7, 8]
    fake.loras.append("aiko-broken.safetensors")
    fake.corrupt_loras.add("aiko-broken.safetensors")
    backend.lora = LoraSpec(Path("/data/loras/aiko/aiko-broken.safetensors"))
    failed = generate_for_character(
        registry, root, backend, "aiko", GenerationPlan(count=1, seed=9), lambda _: None
    )
    with registry.session() as session:
        error = queries.generation_jobs(session, status="failed")[0].error
    assert failed.failed_jobs and error is not None
    assert "failed in node 2 (LoraLoader): safetensors_rust.SafetensorError" in error
    registry.dispose()
