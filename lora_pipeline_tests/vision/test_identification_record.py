"""Issue 17 item 3: each crop's provenance keeps why it was assigned, in fields (method,
scores, threshold, the VLM's answer when it was asked), for the review app to show."""

from __future__ import annotations

from lora_pipeline.registry import commands
from lora_pipeline.vision.classify import (
    ClassifyOptions,
    classify_character_sources,
    identification_record,
    registry_references,
)
from lora_pipeline.vision.identification import Identification
from lora_pipeline.vision.identifier_factory import build_identifier
from lora_pipeline.vision.tiny_onnx import build_tiny_ccip
from lora_pipeline_tests.vision.cast import AIKO, KENJI, draw_frame
from lora_pipeline_tests.vision.test_persons import (  # noqa: F401 - fixtures
    detectors,
    images_of,
    ingest_frame,
    ollama,
    studio,
)


def test_crops_keep_the_method_scores_and_threshold_that_assigned_them(
    studio, ollama, detectors, tmp_path  # noqa: F811 - the fixtures imported above
) -> None:  # fmt: skip
    registry, root = studio
    persons, _ = detectors
    feat, metrics = build_tiny_ccip(tmp_path / "ccip")
    # One approved picture of Aiko: reference matching can name her; Kenji only by the VLM.
    with registry.session() as session:
        aiko = commands.get_character(session, "aiko")
        stored = root.put_image(draw_frame([(0, AIKO)], seed=7).crop((0, 0, 147, 256)))
        image, _ = commands.add_image(
            session, aiko.id, stored.sha256, stored.relpath, stored.width, stored.height, "upload"
        )
        commands.approve_image(session, image.id)
    identifier = build_identifier(
        f"ccip:{feat}#{metrics}+ollama:{ollama.url}#llava:13b",
        references=registry_references(registry, root),
        reference_threshold=0.95,
    )
    ingest_frame(registry, root, draw_frame([(0, AIKO), (2, KENJI)], seed=8), "both")
    options = ClassifyOptions(near_duplicate_distance=None, persons=persons)
    stats = classify_character_sources(registry, root, "aiko", identifier, lambda _: None, options)
    assert stats.per_character == {"aiko": 1, "kenji": 1}

    (matched,) = [i for i in images_of(registry, "aiko") if i.frame_id is not None]
    why = matched.provenance["identification"]
    assert why["method"] == "reference" and why["matcher"] == "ccip:feat.onnx"
    assert why["threshold"] == 0.95 and why["identifier"] == identifier.name
    assert set(why["scores"]) == {"aiko"} and why["scores"]["aiko"] >= 0.95
    assert why["answer"].startswith("matched by reference")

    (asked,) = images_of(registry, "kenji")
    why = asked.provenance["identification"]
    assert why["method"] == "vlm" and why["vlm"] == "ollama:llava:13b"
    assert why["scores"]["aiko"] < 0.95 and why["threshold"] == 0.95
    assert "kenji" in why["vlm_answer"].lower()


def test_the_record_is_cut_to_the_reason_length_and_needs_no_fields() -> None:
    class Named:
        name = "ollama:llava:13b"

    plain = identification_record(Named(), Identification(frozenset(), "x" * 1000))
    assert plain == {"identifier": "ollama:llava:13b", "answer": "x" * 300}
    answer = Identification(
        frozenset({"aiko"}), "asked", {"method": "vlm", "vlm_answer": "y" * 1000, "threshold": 0.9}
    )
    full = identification_record(Named(), answer)
    assert full["vlm_answer"] == "y" * 300 and full["threshold"] == 0.9 and full["method"] == "vlm"
    # The record is how it was decided, not what was decided: answers still compare equal.
    assert answer == Identification(frozenset({"aiko"}), "asked")
