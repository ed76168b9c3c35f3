"""A fake ComfyUI server for tests: real HTTP and a real websocket on 127.0.0.1.

It follows the captures in `lora_pipeline_tests/data/comfyui/` (ComfyUI v0.8.0): the 400 bodies
of a failed validation, the websocket frames in their order (status, execution_start,
execution_cached, progress_state / executing per node, one `progress` per sampler step,
executed, execution_success, status, `executing` with node null), the history and queue
entries. Jobs run one at a time on the server's event loop, like ComfyUI's single worker; node
outputs are cached by their inputs as ComfyUI caches them, so a node whose inputs did not change
is reported in `execution_cached` and not run again.

Switches a test can flip: `stuck` (the sampler waits for an interrupt), `corrupt_loras` (a
LoraLoader raises SafetensorError), `websocket_enabled` (the handshake is refused),
`ws_drop_after` (the socket is closed after that many frames), `step_delay`,
`custom_node_packs` (which custom-node packs are installed: none by default, like a stock
server).

Its node types are stock ComfyUI v0.8.0's: `/object_info` answers from the capture of the real
server (543 node types) plus the installed packs' nodes, and a prompt with any other node type
is refused with the real "Cannot execute because node … does not exist."
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import gzip
import hashlib
import io
import json
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import uvicorn
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "comfyui"
COMFYUI_VERSION = "0.8.0"
CORRUPT_LORA_ERROR = ("safetensors_rust.SafetensorError", "Error while deserializing header: ")
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "lms", "dpmpp_2m", "ddim", "uni_pc"]
SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform", "beta"]
BETA_SCHEDULES = ["autoselect", "sqrt_linear (AnimateDiff)", "linear (HotshotXL/default)"]
VIDEO_FORMATS = ["image/gif", "image/webp", "video/h264-mp4", "video/webm"]


def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


@functools.cache
def _stock_object_info_text() -> str:
    with gzip.open(SAMPLES / "object_info_v0.8.0.json.gz", "rt") as capture:
        return capture.read()


@functools.cache
def stock_node_types() -> frozenset[str]:
    """The node types of a stock ComfyUI v0.8.0 (parsed once, not at every prompt)."""
    return frozenset(stock_object_info())


def stock_object_info() -> dict[str, Any]:
    """GET /object_info of a stock ComfyUI v0.8.0 (captured from the real server)."""
    return json.loads(_stock_object_info_text())


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the node classes the fake knows ----------------------------------------------------------


@dataclass(frozen=True)
class Input:
    type: str  # a link type (MODEL, IMAGE...), INT, FLOAT, STRING, BOOLEAN or COMBO
    choices: str | None = None  # for COMBO: the fake's attribute holding the allowed values
    tooltip: str | None = None
    required: bool = True


@dataclass(frozen=True)
class Node:
    inputs: dict[str, Input]
    outputs: tuple[str, ...]
    output_node: bool = False


LINK_TYPES = {
    "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "CONTEXT_OPTIONS",
    "CLIP_VISION", "CLIP_VISION_OUTPUT", "VIDEO",
}
NODES: dict[str, Node] = {
    "CheckpointLoaderSimple": Node(
        {"ckpt_name": Input("COMBO", "checkpoints", "The name of the checkpoint (model) to load.")},
        ("MODEL", "CLIP", "VAE"),
    ),
    "LoraLoader": Node(
        {
            "model": Input("MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            "clip": Input("CLIP", tooltip="The CLIP model the LoRA will be applied to."),
            "lora_name": Input("COMBO", "loras", "The name of the LoRA."),
            "strength_model": Input("FLOAT"),
            "strength_clip": Input("FLOAT"),
        },
        ("MODEL", "CLIP"),
    ),
    "CLIPTextEncode": Node(
        {"text": Input("STRING"), "clip": Input("CLIP")},
        ("CONDITIONING",),
    ),
    "EmptyLatentImage": Node(
        {"width": Input("INT"), "height": Input("INT"), "batch_size": Input("INT")},
        ("LATENT",),
    ),
    "KSampler": Node(
        {
            "model": Input("MODEL"),
            "seed": Input("INT"),
            "steps": Input("INT"),
            "cfg": Input("FLOAT"),
            "sampler_name": Input("COMBO", "samplers"),
            "scheduler": Input("COMBO", "schedulers"),
            "positive": Input("CONDITIONING"),
            "negative": Input("CONDITIONING"),
            "latent_image": Input("LATENT"),
            "denoise": Input("FLOAT"),
        },
        ("LATENT",),
    ),
    "VAEDecode": Node({"samples": Input("LATENT"), "vae": Input("VAE")}, ("IMAGE",)),
    "SaveImage": Node(
        {
            "images": Input("IMAGE", tooltip="The images to save."),
            "filename_prefix": Input("STRING"),
        },
        (),
        output_node=True,
    ),
    # The stock image-to-video nodes (v0.8.0's inputs; their folders' files are the fake's).
    "UNETLoader": Node(
        {"unet_name": Input("COMBO", "diffusion_models"), "weight_dtype": Input("STRING")},
        ("MODEL",),
    ),
    "ModelSamplingSD3": Node({"model": Input("MODEL"), "shift": Input("FLOAT")}, ("MODEL",)),
    "CLIPLoader": Node(
        {
            "clip_name": Input("COMBO", "text_encoders"),
            "type": Input("STRING"),
            "device": Input("STRING", required=False),
        },
        ("CLIP",),
    ),
    "VAELoader": Node({"vae_name": Input("COMBO", "vaes")}, ("VAE",)),
    "CLIPVisionLoader": Node({"clip_name": Input("COMBO", "clip_visions")}, ("CLIP_VISION",)),
    "CLIPVisionEncode": Node(
        {"clip_vision": Input("CLIP_VISION"), "image": Input("IMAGE"), "crop": Input("STRING")},
        ("CLIP_VISION_OUTPUT",),
    ),
    "WanImageToVideo": Node(
        {
            "positive": Input("CONDITIONING"),
            "negative": Input("CONDITIONING"),
            "vae": Input("VAE"),
            "width": Input("INT"),
            "height": Input("INT"),
            "length": Input("INT"),
            "batch_size": Input("INT"),
            "clip_vision_output": Input("CLIP_VISION_OUTPUT", required=False),
            "start_image": Input("IMAGE", required=False),
        },
        ("CONDITIONING", "CONDITIONING", "LATENT"),
    ),
    "CreateVideo": Node({"images": Input("IMAGE"), "fps": Input("FLOAT")}, ("VIDEO",)),
    "SaveVideo": Node(
        {
            "video": Input("VIDEO"),
            "filename_prefix": Input("STRING"),
            "format": Input("STRING"),
            "codec": Input("STRING"),
        },
        (),
        output_node=True,
    ),
    "ADE_StandardUniformContextOptions": Node(
        {
            "context_length": Input("INT"),
            "context_stride": Input("INT"),
            "context_overlap": Input("INT"),
            # AnimateDiff-Evolved's optional inputs of this node.
            "fuse_method": Input("COMBO", "fuse_methods", required=False),
            "use_on_equal_length": Input("BOOLEAN", required=False),
            "start_percent": Input("FLOAT", required=False),
            "guarantee_steps": Input("INT", required=False),
            "prev_context": Input("CONTEXT_OPTIONS", required=False),
        },
        ("CONTEXT_OPTIONS",),
    ),
    "ADE_AnimateDiffLoaderGen1": Node(
        {
            "model": Input("MODEL"),
            "model_name": Input("COMBO", "motion_models"),
            "beta_schedule": Input("COMBO", "beta_schedules"),
            "context_options": Input("CONTEXT_OPTIONS", required=False),
        },
        ("MODEL",),
    ),
    "VHS_VideoCombine": Node(
        {
            "images": Input("IMAGE"),
            "frame_rate": Input("FLOAT"),
            "loop_count": Input("INT"),
            "filename_prefix": Input("STRING"),
            "format": Input("COMBO", "video_formats"),
            "pingpong": Input("BOOLEAN"),
            "save_output": Input("BOOLEAN"),
            # The h264-mp4 format's own widgets, which VideoHelperSuite adds for that format.
            "pix_fmt": Input("STRING", required=False),
            "crf": Input("INT", required=False),
            "save_metadata": Input("BOOLEAN", required=False),
        },
        (),
        output_node=True,
    ),
}
# The custom-node packs the fake can have installed, and the node types each brings.
CUSTOM_NODE_PACKS: dict[str, tuple[str, ...]] = {
    "AnimateDiff-Evolved": ("ADE_StandardUniformContextOptions", "ADE_AnimateDiffLoaderGen1"),
    "VideoHelperSuite": ("VHS_VideoCombine",),
}
_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "INT": (int,),
    "FLOAT": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
}


_STOCK_VIDEO_NODES = frozenset(
    {
        "UNETLoader", "ModelSamplingSD3", "CLIPLoader", "VAELoader", "CLIPVisionLoader",
        "CLIPVisionEncode", "WanImageToVideo", "CreateVideo", "SaveVideo",
    }
)


def is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def invalid_prompt(message: str, details: str = "") -> dict[str, Any]:
    """The shape of ComfyUI's prompt-level errors (execution.validate_prompt)."""
    return {
        "error": {
            "type": "invalid_prompt",
            "message": message,
            "details": details,
            "extra_info": {},
        },
        "node_errors": {},
    }


# --- jobs -------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


class NodeFailure(Exception):
    def __init__(self, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type


@dataclass
class Job:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    client_id: str | None
    create_time: int = field(default_factory=now_ms)

    @property
    def outputs_to_execute(self) -> list[str]:
        return [i for i, node in self.prompt.items() if NODES[node["class_type"]].output_node]

    def queue_entry(self) -> list[Any]:
        extra = {"create_time": self.create_time}
        if self.client_id is not None:
            extra = {"client_id": self.client_id, **extra}
        return [self.number, self.prompt_id, self.prompt, extra, self.outputs_to_execute]


@dataclass
class Run:
    """The state of one job while it executes: what ran, what it sent, what it saved."""

    job: Job
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)


class FakeComfyUI:
    """Start with `with FakeComfyUI() as fake:`; `fake.base_url` is the server."""

    def __init__(self) -> None:
        self.checkpoints = ["random_sd15.safetensors"]
        self.loras = ["random_kohya_r4.safetensors"]
        self.motion_models = ["mm_sd_v15_v2.ckpt"]
        # The stock video template's model files (Comfy-Org's Wan 2.1 I2V names).
        self.diffusion_models = ["wan2.1_i2v_480p_14B_fp16.safetensors"]
        self.text_encoders = ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"]
        self.vaes = ["wan_2.1_vae.safetensors"]
        self.clip_visions = ["clip_vision_h.safetensors"]
        self.samplers, self.schedulers = list(SAMPLERS), list(SCHEDULERS)
        self.beta_schedules, self.video_formats = list(BETA_SCHEDULES), list(VIDEO_FORMATS)
        self.fuse_methods = ["flat", "pyramid", "relative"]
        self.corrupt_loras: set[str] = set()
        self.custom_node_packs: set[str] = set()
        self.stuck = False
        self.websocket_enabled = True
        self.ws_drop_after: int | None = None
        self.step_delay = 0.005
        # What the server saw and did, for the tests to read.
        self.prompts: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str]] = []
        self.interrupts: list[str | None] = []
        self.deleted: list[str] = []
        self.free_requests: list[dict[str, Any]] = []
        self.sent: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.stuck_reached = threading.Event()
        self._history: dict[str, dict[str, Any]] = {}
        self._pending: list[Job] = []
        self._running: Job | None = None
        self._sockets: dict[str, WebSocket] = {}
        self._frames_to: dict[str, int] = {}
        self._cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._number = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FakeComfyUI:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = uvicorn.Config(
            self._app(), log_level="warning", ws="websockets-sansio", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [listener]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake ComfyUI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def _app(self) -> Starlette:
        routes = [
            Route("/prompt", self._post_prompt, methods=["POST"]),
            Route("/history", self._get_histories, methods=["GET"]),
            Route("/history/{prompt_id}", self._get_history, methods=["GET"]),
            Route("/queue", self._get_queue, methods=["GET"]),
            Route("/queue", self._post_queue, methods=["POST"]),
            Route("/interrupt", self._post_interrupt, methods=["POST"]),
            Route("/free", self._post_free, methods=["POST"]),
            Route("/view", self._get_view, methods=["GET"]),
            Route("/system_stats", self._get_system_stats, methods=["GET"]),
            Route("/models/{folder}", self._get_models, methods=["GET"]),
            Route("/object_info", self._get_all_object_info, methods=["GET"]),
            Route("/object_info/{node_class:path}", self._get_object_info, methods=["GET"]),
            WebSocketRoute("/ws", self._websocket),
        ]
        app = Starlette(routes=routes, lifespan=self._lifespan)
        app.add_middleware(_RecordRequests, requests=self.requests)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._work = asyncio.Event()
        self._interrupt = asyncio.Event()
        worker = asyncio.create_task(self._worker())
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    # --- views for the tests ------------------------------------------------------------------

    def history_of(self, prompt_id: str) -> dict[str, Any] | None:
        return self._history.get(prompt_id)

    def frames_of(self, prompt_id: str) -> list[dict[str, Any]]:
        return [
            frame
            for frames in self.sent.values()
            for frame in frames
            if frame["data"].get("prompt_id") == prompt_id
        ]

    # --- validation (POST /prompt) -------------------------------------------------------------

    def _choices(self, spec: Input) -> list[str]:
        return list(getattr(self, spec.choices)) if spec.choices else []

    def _input_errors(self, prompt: dict[str, Any], node_id: str) -> tuple[list[dict], list[str]]:
        """The node's own errors and the nodes it links to."""
        node = prompt[node_id]
        errors, sources = [], []
        for name, spec in NODES[node["class_type"]].inputs.items():
            value = node["inputs"].get(name)
            if name not in node["inputs"]:
                if spec.required:
                    errors.append(
                        _error("required_input_missing", "Required input is missing", name)
                    )
            elif spec.type in LINK_TYPES:
                errors.extend(self._link_errors(prompt, name, spec, value, sources))
            elif spec.type == "COMBO" and value not in self._choices(spec):
                errors.append(self._not_in_list(name, spec, value))
            elif spec.type in _VALUE_TYPES and not isinstance(value, _VALUE_TYPES[spec.type]):
                errors.append(
                    _error("invalid_input_type", "Failed to convert an input value", name)
                )
        return errors, sources

    @staticmethod
    def _link_errors(
        prompt: dict[str, Any], name: str, spec: Input, value: Any, sources: list[str]
    ) -> list[dict[str, Any]]:
        if not is_link(value) or value[0] not in prompt:
            return [_error("bad_linked_input", "Bad linked input, must be a length-2 list", name)]
        outputs = NODES[prompt[value[0]]["class_type"]].outputs
        received = outputs[value[1]] if 0 <= value[1] < len(outputs) else "*"
        if received != spec.type:
            details = f"{name}, received_type({received}) mismatch input_type({spec.type})"
            config = [spec.type, {"tooltip": spec.tooltip}] if spec.tooltip else [spec.type]
            return [
                {
                    "type": "return_type_mismatch",
                    "message": "Return type mismatch between linked nodes",
                    "details": details,
                    "extra_info": {
                        "input_name": name,
                        "input_config": config,
                        "received_type": received,
                        "linked_node": value,
                    },
                }
            ]
        sources.append(value[0])
        return []

    def _not_in_list(self, name: str, spec: Input, value: Any) -> dict[str, Any]:
        choices = self._choices(spec)
        options = {"tooltip": spec.tooltip} if spec.tooltip else {}
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: '{value}' not in {choices!r}",
            "extra_info": {
                "input_name": name,
                "input_config": [choices, options],
                "received_value": value,
            },
        }

    def validate(self, prompt: Any) -> dict[str, Any] | None:
        """None for a valid prompt, else the body of ComfyUI's 400 answer."""
        if not isinstance(prompt, dict):
            return invalid_prompt("Prompt is not a JSON object")
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return invalid_prompt(
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in self.node_types():
                return invalid_prompt(
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in NODES:
                raise NotImplementedError(f"the fake ComfyUI cannot run {node['class_type']}")
            node.setdefault("inputs", {})
        outputs = [i for i, n in prompt.items() if NODES[n["class_type"]].output_node]
        if not outputs:
            body = invalid_prompt("Prompt has no outputs")
            body["error"]["type"] = "prompt_no_outputs"
            return body
        return self._validate_graph(prompt, outputs)

    def _validate_graph(self, prompt: dict[str, Any], outputs: list[str]) -> dict | None:
        node_errors: dict[str, dict[str, Any]] = {}
        output_details: list[str] = []
        for output in outputs:
            seen, stack = set(), [output]
            while stack:
                node_id = stack.pop()
                if node_id in seen:
                    continue
                seen.add(node_id)
                errors, sources = self._input_errors(prompt, node_id)
                stack.extend(sources)
                if errors:
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": errors,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output)
                    if node_id == output:
                        output_details += [f"{e['message']}: {e['details']}" for e in errors]
        if not node_errors:
            return None
        return {
            "error": {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "\n".join(output_details),
                "extra_info": {},
            },
            "node_errors": node_errors,
        }

    # --- HTTP endpoints -----------------------------------------------------------------------

    async def _post_prompt(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(invalid_prompt("Invalid JSON"), status_code=400)
        if not isinstance(body, dict) or "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided"}
            error |= {"details": "No prompt provided", "extra_info": {}}
            return JSONResponse({"error": error, "node_errors": {}}, status_code=400)
        prompt = copy.deepcopy(body["prompt"])
        self.prompts.append(copy.deepcopy(body))
        problem = self.validate(prompt)
        if problem is not None:
            return JSONResponse(problem, status_code=400)
        self._number += 1
        job = Job(self._number, str(uuid.uuid4()), prompt, body.get("client_id"))
        self._pending.append(job)
        self._work.set()
        await self._broadcast_status()
        return JSONResponse({"prompt_id": job.prompt_id, "number": job.number, "node_errors": {}})

    async def _get_history(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self._history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry is not None else {})

    async def _get_histories(self, request: Request) -> Response:
        items = list(self._history.items())
        limit = request.query_params.get("max_items")
        if limit is not None:
            items = items[-int(limit) :]
        return JSONResponse(dict(items))

    async def _get_queue(self, request: Request) -> Response:
        running = [self._running.queue_entry()] if self._running else []
        pending = [job.queue_entry() for job in self._pending]
        return JSONResponse({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: Request) -> Response:
        body = await request.json()
        if body.get("clear"):
            self._pending.clear()
        for prompt_id in body.get("delete", []):
            self.deleted.append(prompt_id)
            self._pending = [job for job in self._pending if job.prompt_id != prompt_id]
        await self._broadcast_status()
        return Response(status_code=200)

    async def _post_interrupt(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        self.interrupts.append(prompt_id)
        # A targeted interrupt only stops the prompt if it is the one running.
        if self._running is not None and prompt_id in (None, self._running.prompt_id):
            self._interrupt.set()
        return Response(status_code=200)

    async def _post_free(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            # aiohttp's answer when ComfyUI's handler fails to parse a missing body.
            return PlainTextResponse(
                "500 Internal Server Error\n\nServer got itself in trouble", status_code=500
            )
        self.free_requests.append(body)
        return Response(status_code=200)

    async def _get_view(self, request: Request) -> Response:
        query = request.query_params
        filename = query.get("filename")
        if filename is None:
            return Response(status_code=404)
        if not filename or filename.startswith("/") or ".." in filename:
            return Response(status_code=400)
        key = (query.get("type", "output"), query.get("subfolder", ""), filename)
        if key not in self.files:
            return Response(status_code=404)
        media = "image/png" if filename.endswith(".png") else "video/mp4"
        return Response(self.files[key], media_type=media)

    async def _get_system_stats(self, request: Request) -> Response:
        gib = 1024**3
        return JSONResponse(
            {
                "system": {
                    "os": "posix",
                    "ram_total": 128 * gib,
                    "ram_free": 100 * gib,
                    "comfyui_version": COMFYUI_VERSION,
                    "python_version": "3.11.9",
                    "pytorch_version": "2.9.0+cpu",
                    "embedded_python": False,
                    "argv": ["main.py", "--cpu"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": 128 * gib,
                        "vram_free": 100 * gib,
                        "torch_vram_total": 128 * gib,
                        "torch_vram_free": 100 * gib,
                    }
                ],
            }
        )

    async def _get_models(self, request: Request) -> Response:
        folders = {
            "checkpoints": self.checkpoints,
            "loras": self.loras,
            "diffusion_models": self.diffusion_models,
            "text_encoders": self.text_encoders,
            "vae": self.vaes,
            "clip_vision": self.clip_visions,
        }
        folder = request.path_params["folder"]
        if folder not in folders:
            return Response(status_code=404)
        return JSONResponse(folders[folder])

    def node_types(self) -> set[str]:
        """The node types this server has: stock v0.8.0's and the installed packs'."""
        packs = (CUSTOM_NODE_PACKS[name] for name in self.custom_node_packs)
        return set(stock_node_types()).union(*packs)

    def object_info(self) -> dict[str, Any]:
        info = stock_object_info()
        info["LoraLoader"] = sample("object_info_LoraLoader.json")["LoraLoader"]
        info["LoraLoader"]["input"]["required"]["lora_name"][0] = list(self.loras)
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(self.checkpoints)
        for node, name, files in (
            ("UNETLoader", "unet_name", self.diffusion_models),
            ("CLIPLoader", "clip_name", self.text_encoders),
            ("VAELoader", "vae_name", self.vaes),
            ("CLIPVisionLoader", "clip_name", self.clip_visions),
        ):
            info[node]["input"]["required"][name][0] = list(files)
        for pack in self.custom_node_packs:
            info.update(
                {name: self._pack_node_info(name, pack) for name in CUSTOM_NODE_PACKS[pack]}
            )
        return info

    def _pack_node_info(self, name: str, pack: str) -> dict[str, Any]:
        """An object_info entry for a custom node, from the fake's own definition of it."""
        node = NODES[name]
        inputs: dict[str, dict[str, list[Any]]] = {"required": {}, "optional": {}}
        for input_name, spec in node.inputs.items():
            kind = list(getattr(self, spec.choices)) if spec.choices else spec.type
            inputs["required" if spec.required else "optional"][input_name] = [kind]
        return {
            "input": inputs,
            "output": list(node.outputs),
            "output_node": node.output_node,
            "name": name,
            "python_module": f"custom_nodes.ComfyUI-{pack}",
        }

    async def _get_all_object_info(self, request: Request) -> Response:
        return JSONResponse(self.object_info())

    async def _get_object_info(self, request: Request) -> Response:
        node_class = request.path_params["node_class"]
        info = self.object_info()
        return JSONResponse({node_class: info[node_class]} if node_class in info else {})

    # --- websocket ----------------------------------------------------------------------------

    async def _websocket(self, websocket: WebSocket) -> None:
        if not self.websocket_enabled:
            await websocket.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
        await websocket.accept()
        self._sockets[client_id] = websocket  # like ComfyUI: the newest socket of an id wins
        self._frames_to[client_id] = 0
        status = {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        await self._send(client_id, "status", status | {"sid": client_id})
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            if self._sockets.get(client_id) is websocket:
                del self._sockets[client_id]

    def _remaining(self) -> int:
        return len(self._pending) + (1 if self._running else 0)

    async def _send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        if client_id is None:
            return
        self.sent.setdefault(client_id, []).append({"type": kind, "data": data})
        websocket = self._sockets.get(client_id)
        if websocket is None:
            return
        try:
            await websocket.send_text(json.dumps({"type": kind, "data": data}))
            self._frames_to[client_id] += 1
            if self.ws_drop_after is not None and self._frames_to[client_id] >= self.ws_drop_after:
                del self._sockets[client_id]
                await websocket.close(code=1011)
        except (RuntimeError, OSError, WebSocketDisconnect):
            self._sockets.pop(client_id, None)

    async def _send_preview(self, client_id: str | None) -> None:
        # ComfyUI's binary PREVIEW_IMAGE frame: event 1, image type 1 (JPEG), then the image.
        websocket = self._sockets.get(client_id or "")
        if websocket is None:
            return
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, format="JPEG")
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
            await websocket.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x01" + buffer.getvalue())

    async def _broadcast_status(self) -> None:
        status = {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        for client_id in list(self._sockets):
            await self._send(client_id, "status", status)

    # --- the worker ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._work.clear()
                await self._work.wait()
            job = self._pending.pop(0)
            self._running = job
            self._interrupt.clear()
            try:
                await self._execute(job)
            finally:
                self._running = None
            # ComfyUI writes the history, updates the queue, then says it is idle.
            await self._broadcast_status()
            await self._send(job.client_id, "executing", {"node": None, "prompt_id": job.prompt_id})

    async def _message(self, run: Run, kind: str, data: dict[str, Any]) -> None:
        data = {"prompt_id": run.job.prompt_id, **data, "timestamp": now_ms()}
        run.messages.append([kind, data])
        await self._send(run.job.client_id, kind, data)

    async def _execute(self, job: Job) -> None:
        await self._broadcast_status()
        run = Run(job)
        order = _execution_order(job.prompt, job.outputs_to_execute)
        signatures = {node_id: _signature(job.prompt, node_id) for node_id in order}
        cached = [n for n in order if signatures[n] in self._cache]
        await self._message(run, "execution_start", {})
        await self._message(run, "execution_cached", {"nodes": cached})
        status = "success"
        try:
            for node_id in order:
                if self._interrupt.is_set():
                    raise Interrupted
                if node_id in cached:
                    await self._replay(run, node_id, signatures[node_id])
                else:
                    await self._run_node(run, node_id, signatures[node_id])
            await self._message(run, "execution_success", {})
        except Interrupted:
            status = "error"
            await self._message(run, "execution_interrupted", self._where(run))
        except NodeFailure as failure:
            status = "error"
            await self._message(run, "execution_error", self._failure(run, failure))
        self._history[job.prompt_id] = {
            "prompt": job.queue_entry(),
            "outputs": run.outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": run.messages,
            },
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in run.outputs
            },
        }

    def _where(self, run: Run) -> dict[str, Any]:
        node_id = run.executed[-1] if run.executed else None
        node_type = run.job.prompt[node_id]["class_type"] if node_id else None
        done = [n for n in run.executed if run.states.get(n, {}).get("state") == "finished"]
        return {"node_id": node_id, "node_type": node_type, "executed": done}

    def _failure(self, run: Run, failure: NodeFailure) -> dict[str, Any]:
        where = self._where(run)
        node = run.job.prompt[where["node_id"]]
        return where | {
            "exception_message": str(failure),
            "exception_type": failure.exception_type,
            "traceback": [
                '  File "ComfyUI/execution.py", line 496, in execute\n',
                f"{failure.exception_type}: {failure}\n",
            ],
            "current_inputs": {k: [v] for k, v in node["inputs"].items() if not is_link(v)},
            "current_outputs": list(run.executed),
        }

    async def _progress_state(self, run: Run) -> None:
        await self._send(
            run.job.client_id,
            "progress_state",
            {"prompt_id": run.job.prompt_id, "nodes": copy.deepcopy(run.states)},
        )

    def _state(self, run: Run, node_id: str, value: float, maximum: float, state: str) -> None:
        run.states[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": run.job.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def _replay(self, run: Run, node_id: str, signature: str) -> None:
        values, ui = self._cache[signature]
        run.values[node_id] = values
        if ui is not None:
            await self._executed(run, node_id, ui)

    async def _executed(self, run: Run, node_id: str, ui: dict[str, Any]) -> None:
        run.outputs[node_id] = ui
        data = {"node": node_id, "display_node": node_id, "output": ui}
        await self._send(run.job.client_id, "executed", data | {"prompt_id": run.job.prompt_id})

    async def _run_node(self, run: Run, node_id: str, signature: str) -> None:
        job = run.job
        self._state(run, node_id, 0.0, 1.0, "running")
        await self._progress_state(run)
        run.executed.append(node_id)
        await self._send(
            job.client_id,
            "executing",
            {"node": node_id, "display_node": node_id, "prompt_id": job.prompt_id},
        )
        values, ui = await self._evaluate(run, node_id)
        run.values[node_id] = values
        self._cache[signature] = (values, ui)
        if ui is not None:
            await self._executed(run, node_id, ui)
        maximum = run.states[node_id]["max"]
        self._state(run, node_id, maximum, maximum, "finished")
        await self._progress_state(run)

    def _inputs(self, run: Run, node_id: str) -> dict[str, Any]:
        inputs = dict(run.job.prompt[node_id]["inputs"])
        for name, value in inputs.items():
            if is_link(value):
                inputs[name] = run.values[value[0]][value[1]]
        return inputs

    async def _evaluate(self, run: Run, node_id: str) -> tuple[tuple[Any, ...], dict | None]:
        """Run one node: its output values and, for an output node, what it saved."""
        class_type = run.job.prompt[node_id]["class_type"]
        inputs = self._inputs(run, node_id)
        if class_type == "CheckpointLoaderSimple":
            base = {"checkpoint": inputs["ckpt_name"], "loras": []}
            return (base, base, {"vae": inputs["ckpt_name"]}), None
        if class_type == "LoraLoader":
            if inputs["lora_name"] in self.corrupt_loras:
                raise NodeFailure(CORRUPT_LORA_ERROR[0], CORRUPT_LORA_ERROR[1] + "HeaderTooLarge")
            lora = [inputs["lora_name"], inputs["strength_model"], inputs["strength_clip"]]
            model = inputs["model"] | {"loras": inputs["model"]["loras"] + [lora]}
            clip = inputs["clip"] | {"loras": inputs["clip"]["loras"] + [lora]}
            return (model, clip), None
        if class_type == "CLIPTextEncode":
            return ({"text": inputs["text"], "clip": inputs["clip"]},), None
        if class_type in ("EmptyLatentImage", "ADE_StandardUniformContextOptions"):
            return (inputs,), None
        if class_type == "ADE_AnimateDiffLoaderGen1":
            return (inputs["model"] | {"motion": inputs["model_name"]},), None
        if class_type == "KSampler":
            return (await self._sample(run, node_id, inputs),), None
        if class_type == "VAEDecode":
            return (_decode(inputs["samples"]),), None
        if class_type == "SaveImage":
            return (), {"images": self._save_images(run, inputs)}
        if class_type in _STOCK_VIDEO_NODES:
            return await self._stock_video_node(class_type, inputs)
        return (), {"gifs": [await self._save_video(inputs)]}

    async def _stock_video_node(
        self, class_type: str, inputs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict | None]:
        """The image-to-video chain: loaders name their file; WanImageToVideo's latent holds
        `length` frames seeded by the start image, so the clip follows the keyframe."""
        if class_type == "WanImageToVideo":
            start = inputs.get("start_image") or []
            image = hashlib.sha256(b"".join(frame.tobytes() for frame in start)).hexdigest()
            latent = {
                "width": inputs["width"],
                "height": inputs["height"],
                "batch_size": inputs["length"],
                "start_image": image,
            }
            return (inputs["positive"], inputs["negative"], latent), None
        if class_type == "CreateVideo":
            return ({"frames": inputs["images"], "fps": inputs["fps"]},), None
        if class_type == "SaveVideo":
            video = inputs["video"]
            subfolder, filename = self._output_name(inputs["filename_prefix"], "mp4")
            data = await asyncio.to_thread(_encode_mp4, video["frames"], video["fps"])
            self.files[("output", subfolder, filename)] = data
            saved = {"filename": filename, "subfolder": subfolder, "type": "output"}
            return (), {"images": [saved], "animated": [True]}  # as ComfyUI's PreviewVideo
        if class_type == "CLIPVisionEncode":
            image = hashlib.sha256(b"".join(f.tobytes() for f in inputs["image"])).hexdigest()
            return ({"clip_vision": inputs["clip_vision"], "image": image},), None
        model = inputs.get("model", {})
        return ({**model, class_type: {k: v for k, v in inputs.items() if k != "model"}},), None

    async def _sample(self, run: Run, node_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
        steps = inputs["steps"]
        if self.stuck:
            self.stuck_reached.set()
            await self._interrupt.wait()
        for step in range(1, steps + 1):
            if self._interrupt.is_set():
                raise Interrupted
            await asyncio.sleep(self.step_delay)
            self._state(run, node_id, step, steps, "running")
            await self._progress_state(run)
            if step == 1:
                await self._send_preview(run.job.client_id)
            data = {"value": step, "max": steps, "prompt_id": run.job.prompt_id, "node": node_id}
            await self._send(run.job.client_id, "progress", data)
        latent = inputs["latent_image"]
        material = {k: v for k, v in inputs.items() if k != "latent_image"} | {"latent": latent}
        return latent | {"noise": hashlib.sha256(json.dumps(material).encode()).digest()}

    def _output_name(self, prefix: str, extension: str) -> tuple[str, str]:
        subfolder, _, name = prefix.rpartition("/")
        counter = self._counters.get((subfolder, name), 0) + 1
        self._counters[(subfolder, name)] = counter
        return subfolder, f"{name}_{counter:05}_.{extension}"

    def _save_images(self, run: Run, inputs: dict[str, Any]) -> list[dict[str, Any]]:
        saved = []
        for image in inputs["images"]:
            subfolder, filename = self._output_name(inputs["filename_prefix"], "png")
            info = PngInfo()
            info.add_text("prompt", json.dumps(run.job.prompt))  # as ComfyUI's SaveImage does
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=info)
            self.files[("output", subfolder, filename)] = buffer.getvalue()
            saved.append({"filename": filename, "subfolder": subfolder, "type": "output"})
        return saved

    async def _save_video(self, inputs: dict[str, Any]) -> dict[str, Any]:
        subfolder, filename = self._output_name(inputs["filename_prefix"], "mp4")
        frames, rate = inputs["images"], inputs["frame_rate"]
        data = await asyncio.to_thread(_encode_mp4, frames, rate)
        kind = "output" if inputs["save_output"] else "temp"
        self.files[(kind, subfolder, filename)] = data
        return {
            "filename": filename,
            "subfolder": subfolder,
            "type": kind,
            "format": inputs["format"],
            "frame_rate": rate,
        }


class _RecordRequests:
    """ASGI middleware: (method, path, query) of every HTTP request."""

    def __init__(self, app: Any, requests: list[tuple[str, str, str]]) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests.append(
                (scope["method"], scope["path"], scope.get("query_string", b"").decode())
            )
        await self.app(scope, receive, send)


def _error(kind: str, message: str, input_name: str) -> dict[str, Any]:
    return {
        "type": kind,
        "message": message,
        "details": input_name,
        "extra_info": {"input_name": input_name},
    }


def _execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Dependencies first, from each output node in turn (what ComfyUI needs, in some order)."""
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        for value in prompt[node_id]["inputs"].values():
            if is_link(value):
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order


def _signature(prompt: dict[str, Any], node_id: str) -> str:
    """ComfyUI's cache key: the class and inputs, with links replaced by their source's key."""
    node = prompt[node_id]
    inputs = {
        name: [_signature(prompt, value[0]), value[1]] if is_link(value) else value
        for name, value in sorted(node["inputs"].items())
    }
    return json.dumps([node["class_type"], inputs])


def _decode(latent: dict[str, Any]) -> list[Image.Image]:
    """Coloured noise from the sampler's inputs: what a random-weights checkpoint draws."""
    seed = int.from_bytes(latent["noise"][:8], "big")
    rng = np.random.default_rng(seed)
    shape = (latent["batch_size"], latent["height"], latent["width"], 3)
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return [Image.fromarray(frame, "RGB") for frame in pixels]


def _encode_mp4(frames: list[Image.Image], frame_rate: float) -> bytes:
    width, height = frames[0].size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=frame_rate)
        writer.send(None)
        for frame in frames:
            writer.send(frame.tobytes())
        writer.close()
        return path.read_bytes()


@contextlib.contextmanager
def fake_comfyui() -> Iterator[FakeComfyUI]:
    with FakeComfyUI() as fake:
        yield fake
