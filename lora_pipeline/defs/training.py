"""Training stage: a kohya-format LoRA trained in a child process, registered as a candidate.

The trainer runs as `python -m lora_pipeline.training.pipes_entry` under Dagster's
`PipesSubprocessClient`: its log lines (step, epoch, loss, it/s, ETA) stream into the run's log,
each epoch becomes an `AssetObservation`, and a crash, an out-of-memory kill or a cancel ends the
child, never the run worker. A re-run resumes from the last saved epoch.

The GPU is shared: the step holds the device's lock as batch work, and when interactive work
(images for review, regenerations) waits, the built-in trainer saves its exact state at the next
step boundary and exits; the step lets the lock go, waits for the GPU again (after the
interactive work) and starts the child once more, which resumes from that state.
"""

import logging
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    Config,
    Failure,
    MetadataValue,
    Output,
    PipesSubprocessClient,
    PipesTempFileMessageReader,
    PreviewWarning,
    asset,
)
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field, create_model

from lora_pipeline.defs.gpu import gpu_op_tags, gpu_step
from lora_pipeline.defs.metadata import image_markdown
from lora_pipeline.defs.partitions import GPU_POOL, character_partitions
from lora_pipeline.defs.resources import DataRootResource, ModelsResource, RegistryResource
from lora_pipeline.model_runtime import ModelRuntime
from lora_pipeline.training.errors import OOM_ADVICE
from lora_pipeline.training.job import GpuYield, TrainingJob
from lora_pipeline.training.options import (
    RunOptions,
    TrainingConfig,
    launchpad_options,
    option_problems,
    split_launchpad,
)
from lora_pipeline.training.reports import TrainingResult
from lora_pipeline.training.service import (
    ReleaseRef,
    plan_character_training,
    register_trained_lora,
)
from lora_pipeline.training.status import now_iso, status_path, update_status

log = logging.getLogger(__name__)

CHILD_MODULE = "lora_pipeline.training.pipes_entry"


def _run_config_class() -> type[Config]:
    """The launchpad's config, built from the declared options (`training/options.py`): each
    one a field with its default and help, so the two cannot drift apart."""
    fields: dict[str, Any] = {
        spec.name: (spec.annotation, Field(spec.default, description=spec.description))
        for spec in launchpad_options()
    }
    return create_model(
        "TrainingRunConfig",
        __base__=Config,
        __module__=__name__,
        __doc__="Overrides from the launchpad. Unset values take the smart defaults for the "
        "dataset size (epochs, batch size, learning rate 1e-4, rank 32, alpha 16, the model's "
        "native resolution).",
        **fields,
    )


TrainingRunConfig = _run_config_class()


def training_options(run: Config, runtime: ModelRuntime) -> tuple[TrainingConfig, RunOptions]:
    """The launchpad's values as what the run trains with and how the pipeline runs it, on the
    runtime's checkpoint (`ModelRuntime.for_character`: the character's profile's)."""
    settings, options = split_launchpad(run.model_dump())
    config = TrainingConfig(
        base_model=runtime.base_model_id(),
        device=runtime.device_name(),
        single_file_config=runtime.single_file_config(),
        **settings,
    )
    return config, options


class TrainingMessages(PipesTempFileMessageReader):
    """Reads the child's Pipes messages; turns its epoch reports into AssetObservations and keeps
    its result, failure or interruption for the asset."""

    def __init__(self, context: AssetExecutionContext) -> None:
        super().__init__()
        self._context = context
        self.result: TrainingResult | None = None
        self.failure: str | None = None
        self.interrupted: dict | None = None
        self.crash: str | None = None

    @contextmanager
    def read_messages(self, handler: Any):
        intercepting = _Intercepting(handler, self.on_custom_message, self.on_closed)
        with super().read_messages(intercepting) as params:
            yield params

    def on_custom_message(self, payload: Any) -> None:
        kind = payload.get("kind") if isinstance(payload, dict) else None
        if kind == "epoch":
            try:
                self._context.log_event(_epoch_observation(self._context, payload))
            except Exception as error:  # noqa: BLE001 - a report must never stop the reading
                self._context.log.warning(f"could not record epoch {payload.get('epoch')}: {error}")
        elif kind == "result":
            self.result = TrainingResult.from_dict(payload["result"])
        elif kind == "failure":
            self.failure = str(payload.get("message"))
        elif kind == "interrupted":
            self.interrupted = payload

    def on_closed(self, params: Any) -> None:
        # A child that died of an exception before it could report a failure still closes its
        # Pipes session with that exception: its first line is the reason to show.
        exception = (params or {}).get("exception") if isinstance(params, dict) else None
        if isinstance(exception, dict) and not self.failure:
            message = str(exception.get("message") or "").strip().splitlines()
            name = exception.get("name") or "error"
            self.crash = f"{name}: {message[0]}" if message else str(name)


class _Intercepting:
    """The Pipes message handler, with custom messages also handed to a callback as they come."""

    def __init__(self, handler: Any, on_custom: Any, on_closed: Any) -> None:
        self._handler = handler
        self._on_custom = on_custom
        self._on_closed = on_closed

    def handle_message(self, message: dict) -> None:
        if message.get("method") == "report_custom_message":
            self._on_custom((message.get("params") or {}).get("payload"))
        elif message.get("method") == "closed":
            self._on_closed(message.get("params"))
        self._handler.handle_message(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


def _epoch_observation(context: AssetExecutionContext, report: dict) -> AssetObservation:
    metadata: dict[str, Any] = {
        "epoch": report["epoch"],
        "epochs": report["epochs"],
        "step": report["step"],
        "total_steps": report["total_steps"],
        "mean_loss": round(float(report["mean_loss"]), 6),
        "seconds": round(float(report["seconds"]), 2),
    }
    if report.get("lora_path"):
        metadata["lora_file"] = MetadataValue.path(report["lora_path"])
    samples = [Path(p) for p in report.get("sample_paths") or [] if Path(p).is_file()]
    if samples:
        from PIL import Image

        with Image.open(samples[0]) as first:
            metadata["sample"] = image_markdown(first, f"epoch {report['epoch']} sample")
        metadata["samples"] = MetadataValue.json([str(p) for p in samples])
    partition = context.partition_key if context.has_partition_key else None
    return AssetObservation(asset_key=context.asset_key, partition=partition, metadata=metadata)


class TrainingYielded(Exception):
    """The child paused for interactive GPU work; its state is saved at `step`."""

    def __init__(self, step: int, waiting: int) -> None:
        super().__init__(f"paused at step {step} for {waiting} interactive job(s)")
        self.step, self.waiting = step, waiting


def _failure(error: DagsterPipesExecutionError, messages: TrainingMessages) -> Failure:
    """One readable reason for a training process that did not succeed."""
    if messages.failure:
        return Failure(description=f"training failed: {messages.failure}")
    if messages.interrupted:
        step = messages.interrupted.get("step")
        return Failure(
            description=f"training was stopped at step {step}; its state is saved and the next "
            "run of trained_lora for this character resumes from there"
        )
    match = re.search(r"code (-?\d+)", str(error))
    code = int(match.group(1)) if match else None
    if code is not None and code < 0:
        return Failure(
            description=f"the training process was killed by signal {-code}"
            f"{' (SIGKILL: most often the out-of-memory killer)' if code == -9 else ''}. "
            f"If memory ran out: {OOM_ADVICE}."
        )
    reason = f": {messages.crash}" if messages.crash else ""
    return Failure(
        description=f"the training process crashed (exit code {code}){reason}; its traceback "
        "is in the step's stderr. The next run resumes from the last saved epoch."
    )


def run_training_process(
    context: AssetExecutionContext,
    job: TrainingJob,
    env: dict | None = None,
    status_file: Path | None = None,
) -> tuple[TrainingResult, dict]:
    """Train `job` in a child process through Dagster Pipes; the result and the metadata the
    child reported for the materialization."""
    messages = TrainingMessages(context)
    client = PipesSubprocessClient(message_reader=messages, termination_timeout_seconds=60)
    try:
        with warnings.catch_warnings():
            # Dagster's own Pipes handler reads a preview property of every message reader.
            warnings.simplefilter("ignore", PreviewWarning)
            invocation = client.run(
                context=context,
                command=[sys.executable, "-m", CHILD_MODULE],
                extras={
                    "job": job.to_dict(),
                    **({"status_file": str(status_file)} if status_file else {}),
                },
                env=env,
            )
    except DagsterPipesExecutionError as error:
        yielded = messages.interrupted or {}
        if yielded.get("reason") == "yield":
            raise TrainingYielded(int(yielded["step"]), int(yielded.get("waiting", 0))) from None
        raise _failure(error, messages) from error
    if messages.result is None:
        raise Failure(description="the training process ended without reporting a result")
    reported = invocation.get_materialize_result().metadata or {}
    return messages.result, dict(reported)


@dataclass
class GpuPauses:
    """How often and how long a training gave the GPU to interactive work."""

    count: int = 0
    seconds: float = 0.0
    jobs: int = 0

    def metadata(self) -> dict[str, Any]:
        return {"gpu_pauses": self.count, "paused_s": round(self.seconds, 2)}


def train_sharing_the_gpu(
    context: AssetExecutionContext, models: ModelsResource, job: TrainingJob
) -> tuple[TrainingResult, dict, GpuPauses]:
    """Run the training child under the GPU lock, pausing for interactive work when the
    settings allow it; the result, the child's metadata and the pauses."""
    runtime = models.runtime()
    settings = runtime.settings
    if settings.training_yields and job.backend == "builtin":
        lock_dir, device = str(settings.gpu_lock_dir), runtime.device_name()
        job = replace(job, gpu_yield=GpuYield(lock_dir, device, settings.training_min_run_s))
    elif settings.training_yields:
        context.log.info(
            "the kohya backend cannot pause at a step for interactive GPU work: it runs to the end"
        )
    pauses, paused_at = GpuPauses(), None
    # What the review app shows of this training (training/status.py).
    partition = context.partition_key if context.has_partition_key else None
    status = status_path(settings.data_root, partition) if partition else None
    _status(
        status,
        run_id=context.run_id,
        state="waiting",
        step=0,
        paused_count=0,
        paused_jobs=0,
        paused_s=0.0,
        paused_since=None,
        sample=None,
        started_at=now_iso(),
    )
    while True:
        escalate = settings.training_max_pause_s
        with gpu_step(context, models, "batch", escalate_after_s=escalate):
            if paused_at is not None:
                pauses.seconds += time.monotonic() - paused_at
                context.log.info(
                    f"training resumes: paused {pauses.count} time(s) for {pauses.jobs} "
                    f"interactive job(s), {pauses.seconds:.1f} s in all"
                )
            context.log.info(runtime.release_gpu())
            _status(status, state="running", paused_since=None, paused_s=round(pauses.seconds, 1))
            try:
                result, reported = run_training_process(context, job, status_file=status)
            except TrainingYielded as yielded:
                pauses.count, pauses.jobs = pauses.count + 1, pauses.jobs + yielded.waiting
                context.log.info(f"training {yielded}: the GPU goes to them first")
                paused_at = time.monotonic()
                _status(
                    status,
                    state="paused",
                    paused_since=now_iso(),
                    paused_count=pauses.count,
                    paused_jobs=pauses.jobs,
                    paused_s=round(pauses.seconds, 1),
                )
                continue
        _status(status, state="trained", step=result.steps, total_steps=result.steps)
        return result, reported, pauses


def _status(path: Path | None, **values: Any) -> None:
    """Update the training's status file; a display must never fail a training."""
    if path is None:
        return
    try:
        update_status(path, **values)
    except OSError as error:
        log.warning("training status %s not written: %s", path, error)


@asset(
    partitions_def=character_partitions,
    group_name="training",
    pool=GPU_POOL,
    op_tags=gpu_op_tags("batch"),
    kinds={"pytorch", "safetensors"},
)
def trained_lora(
    context: AssetExecutionContext,
    config: TrainingRunConfig,
    shot_splits: dict,
    registry: RegistryResource,
    data_root: DataRootResource,
    models: ModelsResource,
) -> Output[ReleaseRef]:
    """A kohya-format LoRA trained on the shot splits (built-in trainer or kohya sd-scripts),
    copied to the ComfyUI loras folder when one is set, registered as a candidate release."""
    # Trained on the checkpoint of the character's project profile, else the setting's.
    runtime = models.runtime().for_character(context.partition_key, registry.get())
    settings, options = training_options(config, runtime)
    # Checked before the GPU is freed and the child started (and the scope before training,
    # not when registering its result).
    problems = option_problems(settings, settings.device) + option_problems(options)
    if problems:
        raise Failure(description="invalid training options: " + "; ".join(problems))
    kohya = runtime.kohya_setup() if options.backend in ("auto", "kohya") else None
    if options.backend == "kohya" and kohya is None:
        raise Failure(description="backend kohya asked for, but no kohya scripts folder is set")
    root = data_root.get()
    job = plan_character_training(
        registry.get(),
        root,
        shot_splits["dataset"],
        shot_splits["split_relpath"],
        settings,
        kohya=kohya,
        samples=options.samples,
        continue_from_failed=options.continue_from_failed,
        log=context.log.info,
        scope=options.scope,
    )
    result, reported, pauses = train_sharing_the_gpu(context, models, job)
    loras_dir = runtime.loras_dir()
    release = register_trained_lora(
        registry.get(),
        root,
        shot_splits["dataset"],
        job,
        result,
        comfyui_loras_dir=Path(loras_dir) if loras_dir else None,
        scope=options.scope,
        run_id=context.run_id,
    )
    return Output(
        release,
        metadata={
            **reported,
            **pauses.metadata(),
            "release_id": release.release_id,
            "backend": job.backend,
            "continued_from_release": release.parent_release_id or "none (fresh LoRA)",
            "path": MetadataValue.path(str(root.path(release.relpath))),
            "comfyui_copy": release.comfyui_copy or "not configured",
        },
    )
