"""The RabbitMQ broker of the distributed-executor tests, at 127.0.0.1:5672 (guest/guest).

When it cannot be reached the calling test is skipped, unless LORA_PIPELINE_REQUIRE_BROKER=1
(CI), where it fails instead (as lora_pipeline_tests/pg.py does for PostgreSQL).
"""

from __future__ import annotations

import os

import pytest

BROKER_URL = os.environ.get("LORA_PIPELINE_TEST_BROKER_URL", "pyamqp://guest:guest@127.0.0.1:5672//")
REQUIRE_ENV = "LORA_PIPELINE_REQUIRE_BROKER"


def require_broker() -> str:
    """The broker's URL; skips (or fails under LORA_PIPELINE_REQUIRE_BROKER=1) if unreachable."""
    from lora_pipeline.config import Settings
    from lora_pipeline.defs.workers import broker_problem

    problem = broker_problem(Settings.from_env(broker_url=BROKER_URL))
    if problem is None:
        return BROKER_URL
    message = f"the broker is not reachable at {BROKER_URL} ({problem}); start RabbitMQ"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)
