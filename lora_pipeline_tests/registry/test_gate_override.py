"""An unverified gate (nothing measured whether the LoRA draws the character) blocks approval
unless a reviewer overrides it with a reason; the override is recorded for that eval."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from lora_pipeline.registry import commands
from lora_pipeline.registry.errors import GateError
from lora_pipeline_tests.registry.conftest import make_cast
from lora_pipeline_tests.registry.test_jobs_releases import release_for

UNVERIFIED = {"gate_reasons": ["identity and clip_score not measured"], "quality": 0.9}


def test_an_unverified_release_needs_an_override_with_reason_and_reviewer(
    session: Session,
) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    first = commands.record_eval(session, release.id, {}, "g.png", [], UNVERIFIED, "unverified")
    with pytest.raises(GateError, match="unverified .*needs an explicit override"):
        commands.set_release_status(session, release.id, "approved")
    with pytest.raises(GateError, match="override"):
        commands.set_release_status(session, release.id, "approved", override_reason="looks ok")
    with pytest.raises(GateError, match="override"):
        commands.set_release_status(
            session, release.id, "approved", override_reason="   ", reviewer="mika"
        )
    approved = commands.set_release_status(
        session, release.id, "approved", override_reason="checked by eye", reviewer="mika"
    )
    assert approved.status == "approved"
    assert (approved.gate_override_reason, approved.gate_override_by) == ("checked by eye", "mika")
    assert approved.gate_override_eval_id == first.id and approved.gate_override_at is not None
    # The override covers that eval: activating needs no second one.
    assert commands.set_release_status(session, release.id, "active").status == "active"
    # A newer unverified eval needs a new decision before it is activated again.
    commands.set_release_status(session, release.id, "approved")
    commands.record_eval(session, release.id, {}, "g.png", [], UNVERIFIED, "unverified")
    with pytest.raises(GateError, match="unverified"):
        commands.set_release_status(session, release.id, "active")


def test_a_failed_gate_cannot_be_overridden(session: Session) -> None:
    _, aiko, _ = make_cast(session)
    release = release_for(session, aiko, 1)
    scores = {"gate_reasons": ["identity 0.2 < 0.6"]}
    commands.record_eval(session, release.id, {}, "g.png", [], scores, "fail")
    with pytest.raises(GateError, match="did not pass the evaluation gate"):
        commands.set_release_status(
            session, release.id, "approved", override_reason="trust me", reviewer="mika"
        )
