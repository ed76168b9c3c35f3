"""The ComfyUI client against the fake server (real HTTP and websocket on 127.0.0.1).

The fake is checked against the captured samples first, so that what the client is tested on
is what ComfyUI v0.8 sends.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from lora_pipeline.generation.comfyui import (
    ComfyUIClient,
    ComfyUIConnectionError,
    ComfyUIError,
    ComfyUIExecutionError,
    ComfyUIInterruptedError,
    ComfyUIProgress,
    ComfyUITimeoutError,
    ComfyUIValidationError,
    OutputFile,
    QueueState,
    copy_to_comfyui,
)
from lora_pipeline_tests.generation.fake_comfyui import FakeComfyUI, sample

RUN3 = sample("run3_lora_prompt_request.json")["prompt"]


def graph(**changes: Any) -> dict[str, Any]:
    """Run 3's request with some node inputs changed: {"6.seed": 7} sets node 6's seed."""
    prompt = {node_id: {**node, "inputs": dict(node["inputs"])} for node_id, node in RUN3.items()}
    for key, value in changes.items():
        node_id, name = key.split(".")
        prompt[node_id]["inputs"][name] = value
    return prompt


def without_lora() -> dict[str, Any]:
    prompt = graph(**{"3.clip": ["1", 1], "4.clip": ["1", 1], "6.model": ["1", 0]})
    del prompt["2"]
    return prompt


@pytest.fixture
def fake() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as server:
        yield server


@pytest.fixture
def client(fake: FakeComfyUI) -> Iterator[ComfyUIClient]:
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as comfy:
        yield comfy


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["type"] for frame in frames]


# --- the fake speaks like the capture ---------------------------------------------------------


def test_fake_rejects_like_comfyui(fake: FakeComfyUI) -> None:
    bad_ckpt = strip = without_lora()
    bad_ckpt["1"]["inputs"]["ckpt_name"] = "nope.safetensors"
    answer = httpx.post(f"{fake.base_url}/prompt", json={"prompt": strip, "client_id": "x"})
    assert answer.status_code == 400
    assert answer.json() == sample("bad_ckpt_response.json")
    model_into_save = {
        "1": RUN3["1"],
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
    }
    answer = httpx.post(f"{fake.base_url}/prompt", json={"prompt": model_into_save})
    assert (answer.status_code, answer.json()) == (400, sample("bad_prompt_response.json"))
    accepted = httpx.post(f"{fake.base_url}/prompt", json={"prompt": RUN3, "client_id": "x"})
    assert accepted.json().keys() == sample("run3_lora_prompt_response.json")["body"].keys()


def test_frames_follow_the_captured_order(fake: FakeComfyUI, client: ComfyUIClient) -> None:
    """After a warm-up (checkpoint and latent cached, as in the capture), the frames of run 3
    are the captured ones, type for type, with the same fields."""
    client.run(without_lora())
    fake.sent.clear()
    events: list[ComfyUIProgress] = []
    result = client.run(RUN3, on_progress=events.append)
    captured = sample("run3_lora_ws_messages.json")
    ((run_client_id, frames),) = fake.sent.items()  # the run's own socket, nothing else
    assert kinds(frames) == kinds(captured)
    for frame, reference in zip(frames, captured, strict=True):
        assert frame["data"].keys() == reference["data"].keys(), frame["type"]
    assert frames[0]["data"]["sid"] == run_client_id
    cached = next(f for f in frames if f["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["1", "5"]
    assert [(e.value, e.maximum, e.node) for e in events] == [(1, 2, "6"), (2, 2, "6")]
    assert events[-1].fraction == 1.0
    history = client.history(result.prompt_id)
    reference = sample("run3_lora_history.json")["b223863a-b160-46a0-8014-0968e3595a30"]
    assert history is not None and history.keys() == reference.keys()
    assert history["status"]["status_str"] == "success"
    assert [m[0] for m in history["status"]["messages"]] == [
        m[0] for m in reference["status"]["messages"]
    ]
    assert history["prompt"][2] == RUN3 and history["prompt"][3]["client_id"] == run_client_id
    assert result.outputs == (OutputFile("8", "images", "run3_lora_00002_.png"),)


def test_parallel_runs_on_one_client_each_get_their_frames(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    """ComfyUI keeps one socket per client id: each run uses its own."""
    events: dict[int, list[ComfyUIProgress]] = {seed: [] for seed in (1, 2, 3)}
    results = {}

    def run(seed: int) -> None:
        results[seed] = client.run(graph(**{"6.seed": seed}), on_progress=events[seed].append)

    runners = [threading.Thread(target=run, args=(seed,)) for seed in events]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(20)
    assert len({result.first().filename for result in results.values()}) == 3
    for seed, progress in events.items():
        assert [e.value for e in progress] == [1, 2], seed
        assert {e.prompt_id for e in progress} == {results[seed].prompt_id}


def test_output_is_the_png_comfyui_saved(client: ComfyUIClient) -> None:
    result = client.run(RUN3)
    data = client.fetch(result.first("images"))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size) == ("PNG", (64, 64))
    assert image.text["prompt"].startswith("{")  # the graph, as ComfyUI embeds it
    assert "random_kohya_r4.safetensors" in image.text["prompt"]
    with pytest.raises(ComfyUIError, match="produced no gifs"):
        result.first("gifs")


# --- refusals ---------------------------------------------------------------------------------


def test_validation_errors_name_the_node_and_the_problem(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    with pytest.raises(ComfyUIValidationError) as bad_ckpt:
        client.queue_prompt(graph(**{"1.ckpt_name": "nope.safetensors"}))
    assert str(bad_ckpt.value) == (
        "ComfyUI rejected the workflow: node 1 (CheckpointLoaderSimple): Value not in list: "
        "ckpt_name: 'nope.safetensors' not in ['random_sd15.safetensors']"
    )
    assert bad_ckpt.value.node_errors["1"]["class_type"] == "CheckpointLoaderSimple"
    with pytest.raises(ComfyUIValidationError, match=r"node 2 \(LoraLoader\): Value not in list"):
        client.queue_prompt(graph(**{"2.lora_name": "someone_else.safetensors"}))
    with pytest.raises(ComfyUIValidationError) as mismatch:
        client.queue_prompt(graph(**{"8.images": ["1", 0]}))
    assert str(mismatch.value) == (
        "ComfyUI rejected the workflow: node 8 (SaveImage): Return type mismatch between "
        "linked nodes: images, received_type(MODEL) mismatch input_type(IMAGE)"
    )
    unknown = graph()
    unknown["9"] = {"class_type": "FaceDetailer", "inputs": {}}
    with pytest.raises(ComfyUIValidationError) as missing_node:
        client.queue_prompt(unknown)
    assert str(missing_node.value) == (
        "ComfyUI rejected the workflow: Cannot execute because node FaceDetailer does not "
        "exist. (Node ID '#9')"
    )
    assert client.queue() == QueueState(running=(), pending=())  # nothing was queued


def test_execution_error_from_the_socket_and_from_the_history(fake: FakeComfyUI) -> None:
    fake.corrupt_loras.add("random_kohya_r4.safetensors")
    expected = (
        r"ComfyUI prompt \S+ failed in node 2 \(LoraLoader\): safetensors_rust.SafetensorError: "
        r"Error while deserializing header: HeaderTooLarge$"
    )
    with ComfyUIClient(fake.base_url, timeout=20, poll_interval=0.02) as client:
        with pytest.raises(ComfyUIExecutionError, match=expected) as raised:
            client.run(RUN3)
        assert raised.value.details["node_type"] == "LoraLoader"
        frames = fake.frames_of(raised.value.details["prompt_id"])
        assert kinds(frames)[-2:] == ["execution_error", "executing"]
        fake.websocket_enabled = False
        with pytest.raises(ComfyUIExecutionError, match=expected):
            client.run(graph(**{"6.seed": 99}))


# --- stuck jobs, interrupts, timeouts ---------------------------------------------------------


def test_stuck_job_is_interrupted_and_a_pending_one_deleted(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    fake.stuck = True
    outcome: list[BaseException] = []
    runner = threading.Thread(target=lambda: outcome.append(_error_of(client, without_lora())))
    runner.start()
    assert fake.stuck_reached.wait(10)
    stuck_id = client.queue().running[0]
    pending_id = client.queue_prompt(graph(**{"6.seed": 5}))
    assert client.queue().pending == (pending_id,)
    assert client.cancel(pending_id) == "removed"
    assert client.cancel(stuck_id) == "interrupted"
    runner.join(10)
    assert isinstance(outcome[0], ComfyUIInterruptedError)
    assert str(outcome[0]) == f"ComfyUI prompt {stuck_id} was interrupted in node 6 (KSampler)"
    assert fake.deleted == [pending_id, stuck_id] and fake.interrupts == [pending_id, stuck_id]
    assert kinds(fake.frames_of(stuck_id))[-2:] == ["execution_interrupted", "executing"]
    # wait() on a finished prompt reads the history: the same error, readable.
    with pytest.raises(ComfyUIInterruptedError, match="interrupted in node 6"):
        client.wait(stuck_id)
    assert fake.history_of(pending_id) is None
    assert client.queue().running == () and client.queue().pending == ()


def test_interrupt_frames_and_history_follow_the_capture(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    client.run(RUN3)  # warm-up: checkpoint and latent cached, as in the capture
    fake.sent.clear()
    fake.stuck = True
    outcome: list[BaseException] = []
    runner = threading.Thread(target=lambda: outcome.append(_error_of(client, without_lora())))
    runner.start()
    assert fake.stuck_reached.wait(10)
    (stuck_id,) = client.queue().running
    client.interrupt(stuck_id)
    runner.join(10)
    assert isinstance(outcome[0], ComfyUIInterruptedError)
    captured = sample("run5_interrupt_ws_messages.json")
    ((_, frames),) = fake.sent.items()
    assert kinds(frames) == kinds(captured)
    for frame, reference in zip(frames, captured, strict=True):
        assert frame["data"].keys() == reference["data"].keys(), frame["type"]
    history = fake.history_of(stuck_id)
    reference = sample("run5_interrupt_history.json")["3f427715-3fab-412f-a355-d04fc10415f9"]
    assert history is not None and history.keys() == reference.keys()
    assert (history["status"]["status_str"], history["status"]["completed"]) == ("error", False)
    assert history["outputs"] == {}
    assert [m[0] for m in history["status"]["messages"]] == [
        m[0] for m in reference["status"]["messages"]
    ]
    interrupted = history["status"]["messages"][-1][1]
    assert interrupted.keys() == reference["status"]["messages"][-1][1].keys()
    assert (interrupted["node_id"], interrupted["executed"]) == ("6", ["3", "4"])


def _error_of(client: ComfyUIClient, workflow: dict[str, Any]) -> BaseException:
    with pytest.raises(ComfyUIError) as raised:
        client.run(workflow)
    return raised.value


def test_queue_entries_have_the_captured_shape(fake: FakeComfyUI, client: ComfyUIClient) -> None:
    assert httpx.get(f"{fake.base_url}/queue").json() == sample("queue_empty.json")
    fake.stuck = True
    running_id = client.queue_prompt(without_lora())
    assert fake.stuck_reached.wait(10)
    pending_id = client.queue_prompt(graph(**{"6.seed": 5}))
    queue = httpx.get(f"{fake.base_url}/queue").json()
    captured = sample("queue_with_pending.json")
    during = sample("run3_lora_queue_during.json")["queue_running"][0]
    for entry in (*queue["queue_running"], *queue["queue_pending"]):
        reference = captured["queue_pending"][0]
        assert [type(part) for part in entry] == [type(part) for part in reference]
        assert entry[3].keys() == during[3].keys()  # client_id and create_time
        assert entry[4] == ["8"]
    assert [e[1] for e in queue["queue_running"]] == [running_id]
    assert [e[1] for e in queue["queue_pending"]] == [pending_id]
    client.cancel(pending_id)
    client.cancel(running_id)


def test_timeout_raises_and_leaves_the_prompt_to_cancel(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    fake.stuck = True
    with pytest.raises(ComfyUITimeoutError, match=r"did not finish within 0\.3 s") as raised:
        client.run(without_lora(), timeout=0.3)
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.prompt_id in client.queue()
    assert client.cancel(raised.value.prompt_id) == "interrupted"
    with pytest.raises(ComfyUIInterruptedError):
        client.wait(raised.value.prompt_id, timeout=10)


def test_a_prompt_deleted_elsewhere_does_not_wait_forever(fake: FakeComfyUI) -> None:
    fake.stuck = True
    with ComfyUIClient(fake.base_url, timeout=30, poll_interval=0.02, check_interval=0.1) as client:
        client.queue_prompt(without_lora())
        assert fake.stuck_reached.wait(10)
        pending_id = client.queue_prompt(graph(**{"6.seed": 5}))
        client.delete_from_queue([pending_id])
        with pytest.raises(ComfyUIError, match="neither queued nor in the history"):
            client.wait(pending_id)
        client.interrupt()
    assert fake.interrupts == [None]


# --- when the socket fails --------------------------------------------------------------------


def test_socket_refused_falls_back_to_polling_history(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    fake.websocket_enabled = False
    events: list[ComfyUIProgress] = []
    result = client.run(RUN3, on_progress=events.append)
    assert result.first().filename == "run3_lora_00001_.png"
    assert events == []  # per-step progress only comes over the socket
    polls = [r for r in fake.requests if r[1] == f"/history/{result.prompt_id}"]
    assert len(polls) >= 1
    assert client.fetch(result.first()).startswith(b"\x89PNG")


def test_socket_dropped_mid_run_falls_back_to_polling(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    fake.ws_drop_after = 8  # closes the socket while the prompt runs
    fake.step_delay = 0.05
    result = client.run(RUN3)
    assert result.first().filename == "run3_lora_00001_.png"
    assert "execution_success" in kinds(fake.frames_of(result.prompt_id))


# --- the other endpoints ----------------------------------------------------------------------


def test_free_stats_models_and_node_info(fake: FakeComfyUI, client: ComfyUIClient) -> None:
    client.free()
    assert fake.free_requests == [{"unload_models": True, "free_memory": True}]
    assert httpx.post(f"{fake.base_url}/free").status_code == 500  # ComfyUI needs the body
    stats = client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.8.0"
    assert {"vram_total", "vram_free"} <= stats["devices"][0].keys()
    assert client.list_loras() == ["random_kohya_r4.safetensors"]
    assert client.list_checkpoints() == ["random_sd15.safetensors"]
    info = client.object_info("LoraLoader")
    reference = sample("object_info_LoraLoader.json")["LoraLoader"]
    assert info.keys() == reference.keys()
    assert info["input"]["required"]["lora_name"][0] == ["random_kohya_r4.safetensors"]
    assert client.object_info("Eff. Loader SDXL") == {}
    assert ("GET", "/object_info/Eff. Loader SDXL", "") in fake.requests


def test_values_travel_as_params_never_in_the_path(
    fake: FakeComfyUI, client: ComfyUIClient
) -> None:
    for bad in ("../../queue", "a/b", "", "x" * 65):
        with pytest.raises(ComfyUIError, match="invalid ComfyUI prompt id"):
            client.history(bad)
    assert not fake.requests
    sneaky = OutputFile("8", "images", "../../secret.png", subfolder="..")
    with pytest.raises(ComfyUIError, match=r"could not serve output file \.\./\.\./\.\./secret"):
        client.fetch(sneaky)
    assert fake.requests == [
        ("GET", "/view", "filename=..%2F..%2Fsecret.png&subfolder=..&type=output")
    ]


def test_unreachable_or_invalid_server_is_one_clear_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ComfyUIClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(ComfyUIConnectionError, match=f"cannot reach ComfyUI at {client.base_url}"):
        client.queue_prompt(RUN3)
    client.close()
    for url in ("ftp://host:8188", "127.0.0.1:8188", "http://host:8188/?token=1"):
        with pytest.raises(ComfyUIConnectionError, match="invalid ComfyUI URL"):
            ComfyUIClient(url)


def test_a_lora_is_copied_to_comfyui_whole_under_its_name(tmp_path: Path) -> None:
    lora = tmp_path / "aiko-v1.safetensors"
    lora.write_bytes(b"weights" * 1000)
    folder = tmp_path / "comfyui" / "loras"
    assert copy_to_comfyui(lora, None) is None
    assert copy_to_comfyui(lora, folder) == folder / lora.name
    lora.write_bytes(b"newer weights")
    copy_to_comfyui(lora, str(folder))  # again, over the first copy
    # Published through a unique temporary name: only the LoRA itself is left in the folder.
    assert [p.name for p in folder.iterdir()] == [lora.name]
    assert (folder / lora.name).read_bytes() == b"newer weights"
