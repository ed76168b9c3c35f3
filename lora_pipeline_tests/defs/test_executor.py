"""LORA_PIPELINE_EXECUTOR picks the jobs' executor; GPU steps go to the celery `gpu` queue."""

from __future__ import annotations

from lora_pipeline.config import Settings
from lora_pipeline.definitions import defs
from lora_pipeline.defs.executor import CELERY_QUEUE_TAG, GPU_QUEUE, chosen_executor
from lora_pipeline_tests.defs.test_definitions import GPU_ASSETS


def test_the_default_is_dagsters_own_executor(tmp_path) -> None:
    assert chosen_executor(Settings.from_env(home=tmp_path)) is None
    settings = Settings.from_env(home=tmp_path, executor="in_process")
    assert chosen_executor(settings).name == "in_process"


def test_celery_executor_takes_the_broker_and_acknowledges_late(tmp_path) -> None:
    broker = "pyamqp://guest@broker.example:5672//"
    settings = Settings.from_env(home=tmp_path, executor="celery", broker_url=broker)
    executor = chosen_executor(settings)
    assert executor.name == "celery_executor"
    # What the run process sends with; `lora-pipeline worker` consumes with the same.
    config = executor.apply_config_mapping({}).value["config"]
    assert config["broker"] == broker
    assert config["config_source"]["task_acks_late"] is True
    assert config["config_source"]["task_default_queue"] == "cpu"

def test_gpu_steps_and_only_they_go_to_the_gpu_queue() -> None:
    job = defs.resolve_job_def("training_job")
    queues = {node.name: node.tags.get(CELERY_QUEUE_TAG) for node in job.nodes}
    assert queues, "the training job has steps"
    for name, queue in queues.items():
        assert queue == (GPU_QUEUE if name in GPU_ASSETS else None), name
