"""ComfyUIImageBackend / ComfyUIVideoBackend against the fake ComfyUI server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
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
from lora_pipeline.generation.service import (
    Backends,
    GenerationPlan,
    clear_stuck_jobs,
    generate_for_character,
    request_generation,
)
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands, queries
from lora_pipeline.registry.db import Registry, migrate
from lora_pipeline.registry.models import GenerationJob
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
        # The custom nodes the AnimateDiff video template needs (a stock server lacks them).
        server.custom_node_packs |= {"AnimateDiff-Evolved", "VideoHelperSuite"}
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


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    registry = Registry(url)
    with registry.session() as session:
        commands.add_project(session, "show", "The Show", style_prompt="anime style")
        for slug in ("aiko", "kenji"):
            commands.add_character(
                session, "show", slug, slug.title(), steps=2, width=64, height=64
            )
    yield registry
    registry.dispose()


def release(
    registry: Registry, slug: str, file: str, n: int, scope: str = "project", active: bool = True
) -> int:
    """A release of `slug` trained on CHECKPOINT, evaluated as passing and (by default) active."""
    with registry.session() as session:
        character = commands.get_character(session, slug)
        row = commands.register_lora_release(
            session,
            character.id,
            None,
            f"loras/{slug}/{file}",
            f"{n:064x}",
            CHECKPOINT,
            {},
            scope=scope,
        )
        commands.record_eval(session, row.id, {}, "evals/grid.png", [], {}, "pass")
        if active:
            commands.set_release_status(session, row.id, "active")
        return row.id


def loader_chain(fake: FakeComfyUI) -> list[tuple[str, float]]:
    """(LoRA, strength) of the last graph's LoraLoaders, from the checkpoint to the sampler."""
    prompt = fake.prompts[-1]["prompt"]
    link = prompt["6"]["inputs"]["model"]  # the KSampler's model
    chain = []
    while prompt[link[0]]["class_type"] == "LoraLoader":
        inputs = prompt[link[0]]["inputs"]
        chain.append((inputs["lora_name"], inputs["strength_model"]))
        link = inputs["model"]
    return chain[::-1]


def test_activation_changes_the_workflow_generation_sends(
    tmp_path: Path, fake: FakeComfyUI, client: ComfyUIClient, registry: Registry
) -> None:
    backend = ComfyUIImageBackend(client, CHECKPOINT, filename_prefix="aiko")
    root = DataRoot(tmp_path / "data")

    def generate(seed: int) -> list[int]:
        plan = GenerationPlan(count=1, seed=seed)
        return generate_for_character(registry, root, backend, "aiko", plan, print).image_ids

    assert generate(7) and loader_chain(fake) == []  # no active release: no LoraLoader
    aiko = release(registry, "aiko", "aiko-0123abcd.safetensors", 1)
    assert generate(8) and loader_chain(fake) == [("aiko-0123abcd.safetensors", 0.8)]
    # A shared baseline release of the checkpoint goes under the character's own LoRA.
    fake.loras.append("style-base.safetensors")
    release(registry, "kenji", "style-base.safetensors", 2, scope="baseline")
    assert generate(9) and loader_chain(fake) == [
        ("style-base.safetensors", 0.8),
        ("aiko-0123abcd.safetensors", 0.8),
    ]
    with registry.session() as session:
        job = queries.generation_jobs(session, limit=1)[0]
        assert [lora["release_id"] for lora in job.params["loras"]] == [aiko + 1, aiko]
        assert job.comfyui_prompt_id and fake.history_of(job.comfyui_prompt_id) is not None
        commands.set_release_status(session, aiko, "approved")  # out of production
    assert generate(10) and loader_chain(fake) == [("style-base.safetensors", 0.8)]


def test_a_release_comfyui_cannot_load_fails_the_job(
    tmp_path: Path, fake: FakeComfyUI, client: ComfyUIClient, registry: Registry
) -> None:
    fake.loras.append("aiko-broken.safetensors")
    fake.corrupt_loras.add("aiko-broken.safetensors")
    release(registry, "aiko", "aiko-broken.safetensors", 1)
    backend = ComfyUIImageBackend(client, CHECKPOINT, filename_prefix="aiko")
    failed = generate_for_character(
        registry,
        DataRoot(tmp_path / "data"),
        backend,
        "aiko",
        GenerationPlan(count=1, seed=9),
        lambda _: None,
    )
    with registry.session() as session:
        error = queries.generation_jobs(session, status="failed")[0].error
    assert failed.failed_jobs and error is not None
    assert "failed in node 2 (LoraLoader): safetensors_rust.SafetensorError" in error


def test_a_requested_video_job_stores_its_clip(
    tmp_path: Path, fake: FakeComfyUI, client: ComfyUIClient, registry: Registry
) -> None:
    release(registry, "aiko", "aiko-0123abcd.safetensors", 1)
    backends = Backends(
        image=ComfyUIImageBackend(client, CHECKPOINT, filename_prefix="aiko"),
        checkpoint=CHECKPOINT,
        video=ComfyUIVideoBackend(client, CHECKPOINT, filename_prefix="aiko"),
    )
    with registry.session() as session:
        job_id = request_generation(session, "aiko", kind="video", seed=5)[0].id
    root = DataRoot(tmp_path / "data")
    plan = GenerationPlan(job_ids=(job_id,))
    outcome = generate_for_character(registry, root, backends, "aiko", plan, print)
    assert outcome.failed_jobs == [] and outcome.image_ids == []
    (loader,) = received(fake, "LoraLoader")
    assert (loader["lora_name"], loader["strength_model"]) == ("aiko-0123abcd.safetensors", 0.8)
    assert received(fake, "EmptyLatentImage")[0]["batch_size"] == 16
    with registry.session() as session:
        job = session.get(GenerationJob, job_id)
        assert job is not None and job.status == "completed"
        assert job.params["output"] == f"videos/aiko/job-{job_id}.mp4"
    assert root.path(job.params["output"]).read_bytes()[4:8] == b"ftyp"


def test_a_job_cleared_while_comfyui_renders_it_is_stopped_and_the_run_goes_on(
    tmp_path: Path, fake: FakeComfyUI, client: ComfyUIClient, registry: Registry
) -> None:
    fake.stuck = True
    backend = ComfyUIImageBackend(client, CHECKPOINT, filename_prefix="aiko")
    root = DataRoot(tmp_path / "data")
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            plan = GenerationPlan(count=1, seed=3)
            outcome["value"] = generate_for_character(registry, root, backend, "aiko", plan, print)
        except Exception as error:  # noqa: BLE001 - inspected below
            outcome["error"] = error

    worker = threading.Thread(target=generate)
    worker.start()
    assert fake.stuck_reached.wait(20)
    time.sleep(0.01)
    cleared = clear_stuck_jobs(registry, timedelta(milliseconds=1), client.cancel)
    worker.join(timeout=60)
    assert "error" not in outcome, outcome  # the run itself is not broken
    assert cleared.failed == [1] and cleared.cancelled == {1: "interrupted"}
    result = outcome["value"]
    assert result.image_ids == [] and result.failed_jobs == []  # cleared, not this run's failure
    assert result.cleared_jobs == [1]
    with registry.session() as session:
        job = session.get(GenerationJob, 1)
        assert job is not None and job.status == "failed" and "stuck" in (job.error or "")
        assert queries.pending_images(session, character_slug="aiko") == []
