"""Production mode for real: two `lora-pipeline worker`s on this machine play two GPU hosts
(their own queue and GPU lock folder each, both on the shared GPU queue), a PostgreSQL Dagster
instance and RabbitMQ between them.

Two partitions at once land one per host and never two on one host; a worker killed with -9
in the middle of a step loses nothing: the broker hands the step to the other host, the run
succeeds, the asset is materialised once and the dead host's GPU lock is free.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_pipeline.config import Settings
from lora_pipeline.defs.workers import live_workers
from lora_pipeline.gpu_lock import GpuLock
from lora_pipeline_tests.broker import require_broker
from lora_pipeline_tests.pg import PG_HOST, PG_PORT, PG_USER, postgres_database_url

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("a", "b")
READY_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 240.0


def _dagster_yaml(database: str) -> str:
    return f"""storage:
  postgres:
    postgres_db:
      username: {PG_USER}
      password: ""
      hostname: {PG_HOST}
      db_name: {database}
      port: {PG_PORT}
      scheme: postgresql+psycopg2
concurrency:
  pools:
    default_limit: 1
    granularity: op
telemetry:
  enabled: false
"""


class Deployment:
    """The two hosts' workers and what a run process needs to reach them."""

    def __init__(self, tmp_path: Path, broker: str, database: str) -> None:
        self.tmp = tmp_path
        self.token = uuid.uuid4().hex[:8]
        self.queue = f"gpu-{self.token}"  # the shared GPU queue, this test's own
        self.probe_dir = tmp_path / "probe"
        self.probe_dir.mkdir()
        dagster_home = tmp_path / "dagster_home"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(_dagster_yaml(database))
        self.env = dict(
            os.environ,
            DAGSTER_HOME=str(dagster_home),
            LORA_PIPELINE_HOME=str(tmp_path / "home"),
            LORA_PIPELINE_EXECUTOR="celery",
            LORA_PIPELINE_BROKER_URL=broker,
            CELERY_PROBE_QUEUE=self.queue,
            CELERY_PROBE_DIR=str(self.probe_dir),
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        )
        self.workers: dict[str, subprocess.Popen] = {}

    def lock_dir(self, host: str) -> Path:
        return self.tmp / f"locks-{host}"

    def name(self, host: str) -> str:
        return f"host-{host}-{self.token}"

    def start_workers(self) -> None:
        lora_pipeline = Path(sys.executable).with_name("lora-pipeline")
        for host in HOSTS:
            argv = [str(lora_pipeline), "worker", "--name", self.name(host)]
            argv += ["--queue", self.queue, "--queue", f"{self.queue}-{host}"]
            argv += ["--gpu-lock-dir", str(self.lock_dir(host))]
            log = (self.tmp / f"worker-{host}.log").open("wb")
            self.workers[host] = subprocess.Popen(
                argv, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_both_answer()

    def _wait_until_both_answer(self) -> None:
        settings = Settings.from_env(broker_url=self.env["LORA_PIPELINE_BROKER_URL"])
        wanted = {self.name(h) for h in HOSTS}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            answered = {w.name.split("@")[0]: w for w in live_workers(settings)}
            if wanted <= set(answered):
                for host in HOSTS:
                    worker = answered[self.name(host)]
                    assert worker.concurrency == 1
                    assert set(worker.queues) == {self.queue, f"{self.queue}-{host}"}
                return
            time.sleep(1)
        pytest.fail(f"the workers did not answer within {READY_TIMEOUT_S:.0f} s" + self.logs())

    def start_run(self, partition: str, mode: str) -> subprocess.Popen:
        env = dict(self.env, CELERY_PROBE_MODE=mode)
        return subprocess.Popen(
            [sys.executable, "-m", "lora_pipeline_tests.defs.celery_probe", partition],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def finish(self, run: subprocess.Popen) -> None:
        try:
            output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            run.kill()
            output, _ = run.communicate()
        assert run.returncode == 0, output.decode()[-4000:] + self.logs()

    def records(self, kind: str, partition: str = "*") -> list[dict]:
        paths = sorted(self.probe_dir.glob(f"{kind}-{partition}-*.json"))
        return [{**json.loads(p.read_text()), "partition": p.stem.split("-")[1]} for p in paths]

    def host_of(self, record: dict) -> str:
        return next(h for h in HOSTS if record["lock_dir"] == str(self.lock_dir(h)))

    def logs(self) -> str:
        return "".join(
            f"\n--- worker {h} ---\n{(self.tmp / f'worker-{h}.log').read_text()[-3000:]}"
            for h in HOSTS
        )

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers.values():
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    broker = require_broker()
    with postgres_database_url("lp_celery") as url:
        deployment = Deployment(tmp_path, broker, url.rsplit("/", 1)[1])
        _allow_one_gpu_step_per_host(deployment)
        try:
            deployment.start_workers()
            yield deployment
        finally:
            deployment.stop()


def _allow_one_gpu_step_per_host(deployment: Deployment) -> None:
    """The GPU pools are instance-wide: with two GPU hosts they take two slots (README)."""
    from dagster import DagsterInstance

    from lora_pipeline.defs.partitions import GPU_POOLS

    with DagsterInstance.from_config(deployment.env["DAGSTER_HOME"]) as instance:
        for pool in GPU_POOLS:
            instance.event_log_storage.set_concurrency_slots(pool, len(HOSTS))


def test_two_partitions_at_once_land_one_per_host(deployment: Deployment) -> None:
    runs = [deployment.start_run(p, "meet") for p in ("one", "two")]
    for run in runs:
        deployment.finish(run)
    ends = deployment.records("end")
    assert sorted(r["partition"] for r in ends) == ["one", "two"]
    assert sorted(deployment.host_of(r) for r in ends) == ["a", "b"], ends
    # Both held their host's GPU at the same time: the second did not wait for the first.
    first, second = sorted(ends, key=lambda r: r["t"])
    assert second["t"] < first["end"], ends
    _doctor_sees_both_hosts(deployment)


def _doctor_sees_both_hosts(deployment: Deployment) -> None:
    """`doctor` lists both workers at concurrency 1 and the pools' two slots. It fails on the
    whole (this home has no registry; the test's queues are not `gpu` and `cpu`)."""
    lora_pipeline = Path(sys.executable).with_name("lora-pipeline")
    done = subprocess.run(
        [str(lora_pipeline), "doctor"], env=deployment.env, cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = {line.split(maxsplit=2)[1]: line for line in done.stdout.splitlines()}
    assert lines["broker"].startswith("ok"), done.stdout
    for host in HOSTS:
        queues = ", ".join(sorted([deployment.queue, f"{deployment.queue}-{host}"]))
        assert f"{deployment.name(host)}@" in lines["workers"], done.stdout
        assert f"[{queues}] x1" in lines["workers"], done.stdout
    assert "gpu 2, gpu_interactive 2 slot(s)" in lines["gpu"], done.stdout


def test_a_worker_killed_mid_step_hands_the_step_to_the_other_host(
    deployment: Deployment,
) -> None:
    run = deployment.start_run("one", "hold")
    started = _wait_for(lambda: deployment.records("start", "one"), deployment)
    victim = deployment.host_of(started[0])
    deployment.workers[victim].send_signal(signal.SIGKILL)
    deployment.finish(run)

    starts, ends = deployment.records("start", "one"), deployment.records("end", "one")
    survivor = next(h for h in HOSTS if h != victim)
    assert [deployment.host_of(r) for r in starts] == [victim, survivor], starts
    assert [deployment.host_of(r) for r in ends] == [survivor], ends
    assert _materialisations(deployment, "one") == 1
    # The kernel freed the dead host's GPU lock with its step's process.
    with GpuLock(deployment.lock_dir(victim)).hold("test", escalate_after_s=0):
        pass


def _wait_for(found, deployment: Deployment, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.2)
    pytest.fail("the step never started" + deployment.logs())


def _materialisations(deployment: Deployment, partition: str) -> int:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    with DagsterInstance.from_config(deployment.env["DAGSTER_HOME"]) as instance:
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("celery_probe"), asset_partitions=[partition]),
            limit=10,
        )
    return len(found.records)
