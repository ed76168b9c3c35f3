"""`worker` and `doctor`: production mode past one machine (README "Production mode").

`worker` starts a dagster-celery worker on this host; `doctor` checks a deployment, one line per
check, and fails when one does. The Dagster and Celery side lives in defs/workers.py, imported
only when a command needs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_pipeline.cli.common import CliError, Subcommands, display_url, settings
from lora_pipeline.config import Settings, child_environment, env_name

# Below this much free space on the data root's disk, a training's checkpoints may not fit.
MIN_FREE_GIB = 5.0


def cmd_worker(args: argparse.Namespace) -> None:
    """Become a dagster-celery worker of the given queues (the process is replaced)."""
    from lora_pipeline.defs.executor import CPU_QUEUE, GPU_QUEUE
    from lora_pipeline.defs.workers import is_gpu_queue, worker_argv, write_worker_config

    current = settings()
    queues = list(dict.fromkeys(args.queue or [GPU_QUEUE, CPU_QUEUE]))
    gpu = [q for q in queues if is_gpu_queue(q)]
    concurrency = args.concurrency or (1 if gpu else os.cpu_count() or 1)
    if gpu and concurrency != 1:
        raise CliError(
            f"a worker of GPU queue {gpu[0]} runs one step at a time (--concurrency 1): its "
            "host has one GPU lock"
        )
    name = args.name or socket.gethostname()
    lock_dir = Path(args.gpu_lock_dir).expanduser().resolve() if args.gpu_lock_dir else None
    folder = current.home / "celery" / name
    folder.mkdir(parents=True, exist_ok=True)
    write_worker_config(current, folder)
    extra = {"PYTHONPATH": _python_path(folder)}
    if lock_dir is not None:
        extra[env_name("gpu_lock_dir")] = str(lock_dir)
    shown_lock = lock_dir or current.gpu_lock_dir
    print(
        f"worker {name}: queues {', '.join(queues)}, concurrency {concurrency}, GPU lock in "
        f"{shown_lock}, broker {display_url(current.broker_url)}",
        flush=True,
    )
    argv = worker_argv(queues, name, concurrency)
    os.execve(argv[0], argv, child_environment(**extra))


def _python_path(folder: Path) -> str:
    existing = child_environment().get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(folder), existing) if p)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':<5} {self.name:<16} {self.detail}"


def cmd_doctor(args: argparse.Namespace) -> None:
    current = settings()
    failed = 0
    for check in _checks(current):
        result = _run_check(check, current)
        print(result.line(), flush=True)
        failed += not result.ok
    if failed:
        raise CliError(f"{failed} check(s) failed")


def _checks(current: Settings) -> list[Callable[[Settings], Check]]:
    checks = [_registry_check, _dagster_check]
    if current.executor == "celery":
        checks += [_broker_check, _workers_check, _gpu_pools_check]
    if current.comfyui_url:
        checks.append(_comfyui_check)
    checks += [_data_root_check, _loras_check, _disk_check]
    return checks


def _run_check(check: Callable[[Settings], Check], current: Settings) -> Check:
    """A check that raises fails with the error's first line, and the others still run."""
    try:
        return check(current)
    except Exception as error:
        name = check.__name__.strip("_").removesuffix("_check").replace("_", " ")
        return Check(name, False, _first_line(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _registry_check(current: Settings) -> Check:
    from lora_pipeline.registry.db import current_revision, head_revision

    url = display_url(current.database_url)
    revision, head = current_revision(current.database_url), head_revision()
    if revision != head:
        state = "never migrated" if revision is None else f"at schema {revision}"
        return Check("registry", False, f"{url} is {state}, not {head}: run `lora-pipeline init`")
    return Check("registry", True, f"{url} (schema {head})")


def _dagster_check(current: Settings) -> Check:
    yaml = current.dagster_home / "dagster.yaml"
    if not yaml.is_file():
        return Check("dagster storage", False, f"no {yaml}: run `lora-pipeline init`")
    from lora_pipeline.defs.instance import open_instance

    with open_instance(current.dagster_home) as instance:
        instance.get_runs(limit=1)
        storage = type(instance.run_storage).__name__
    return Check("dagster storage", True, f"{current.dagster_home} ({storage})")


def _broker_check(current: Settings) -> Check:
    from lora_pipeline.defs.workers import broker_problem

    url = display_url(current.broker_url)
    problem = broker_problem(current)
    return Check("broker", problem is None, url if problem is None else f"{url}: {problem}")


def _workers_check(current: Settings) -> Check:
    """Every queue the jobs send to has a worker, and every GPU queue's worker runs one step."""
    from lora_pipeline.defs.executor import CPU_QUEUE, GPU_QUEUE
    from lora_pipeline.defs.workers import is_gpu_queue, live_workers

    workers = live_workers(current)
    shown = "; ".join(
        f"{w.name} [{', '.join(w.queues)}] x{w.concurrency or '?'}" for w in workers
    )
    served = {q for w in workers for q in w.queues}
    missing = [q for q in (GPU_QUEUE, CPU_QUEUE) if q not in served]
    too_wide = [w.name for w in workers if any(map(is_gpu_queue, w.queues)) and w.concurrency != 1]
    problems = [f"no worker serves queue {q}" for q in missing]
    problems += [f"{name} serves a GPU queue with concurrency ≠ 1" for name in too_wide]
    detail = "; ".join(problems + ([shown] if shown else ["no worker answered"]))
    return Check("workers", not problems, detail)


def _gpu_pools_check(current: Settings) -> Check:
    """The GPU pools are instance-wide: with fewer slots than GPU workers, hosts sit idle."""
    from lora_pipeline.defs.instance import open_instance
    from lora_pipeline.defs.partitions import GPU_POOLS
    from lora_pipeline.defs.workers import is_gpu_queue, live_workers

    gpu_workers = sum(any(map(is_gpu_queue, w.queues)) for w in live_workers(current))
    with open_instance(current.dagster_home) as instance:
        slots = {p: instance.event_log_storage.get_concurrency_info(p).slot_count
                 for p in GPU_POOLS}
    shown = ", ".join(f"{pool} {count}" for pool, count in slots.items())
    short = [pool for pool, count in slots.items() if count < gpu_workers]
    if short:
        fix = f"`dagster instance concurrency set {short[0]} {gpu_workers}`"
        return Check("gpu pools", False, f"{shown} slot(s) for {gpu_workers} GPU workers: {fix}")
    return Check("gpu pools", True, f"{shown} slot(s) for {gpu_workers} GPU worker(s)")


def _comfyui_check(current: Settings) -> Check:
    import httpx

    url = str(current.comfyui_url).rstrip("/")
    response = httpx.get(f"{url}/system_stats", timeout=5.0)
    ok = response.status_code == 200
    return Check("comfyui", ok, url if ok else f"{url}: HTTP {response.status_code}")


def _writable(folder: Path) -> str | None:
    """Why nothing can be written in `folder` (None: a file could be written and removed)."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    probe = folder / f".doctor-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"{folder}: {error.strerror or error}"
    return None


def _data_root_check(current: Settings) -> Check:
    problem = _writable(current.data_root)
    return Check("data root", problem is None, problem or f"{current.data_root} writable")


def _loras_check(current: Settings) -> Check:
    folder = current.comfyui_loras_dir
    if folder is None:
        return Check("lora folder", True, f"unset ({env_name('comfyui_loras_dir')}): LoRAs stay "
                     "in the data root")
    problem = _writable(folder)
    return Check("lora folder", problem is None, problem or f"{folder} writable")


def _disk_check(current: Settings) -> Check:
    # The data root, or the nearest folder above it that exists yet.
    folder = next(p for p in (current.data_root, *current.data_root.parents) if p.exists())
    free = shutil.disk_usage(folder).free / 2**30
    ok = free >= MIN_FREE_GIB
    need = "" if ok else f", under {MIN_FREE_GIB:g} GiB"
    return Check("disk", ok, f"{free:.1f} GiB free under {folder}{need}")


def register(sub: Subcommands) -> None:
    worker = sub.add_parser(
        "worker", help="run steps of the celery executor on this host (production mode)"
    )
    worker.add_argument(
        "--queue", action="append", metavar="NAME",
        help="a queue to consume, repeatable: gpu (the GPU hosts' queue), gpu-<host>, cpu "
        "(default: gpu and cpu)",
    )
    worker.add_argument("--name", help="the worker's name (default: this host's name)")
    worker.add_argument(
        "--concurrency", type=int, help="steps at once (1 with a GPU queue; default: CPUs)"
    )
    worker.add_argument(
        "--gpu-lock-dir", help=f"this host's GPU lock folder (default: {env_name('gpu_lock_dir')})"
    )
    worker.set_defaults(func=cmd_worker)

    doctor = sub.add_parser(
        "doctor", help="check a deployment: databases, broker, workers, ComfyUI, folders, disk"
    )
    doctor.set_defaults(func=cmd_doctor)
