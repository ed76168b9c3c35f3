"""Why a crop was assigned (issue 17 item 3): the single-image views show the identification
record of an image's provenance (method, scores, threshold, the VLM's answer), or that a person
labelled its cluster; images without one show nothing of it."""

from __future__ import annotations

from itertools import count
from typing import Any

from PIL import Image

from lora_pipeline.registry import commands
from lora_pipeline.review.why_assigned import why_assigned
from lora_pipeline_tests.review.conftest import Studio
from lora_pipeline_tests.review.test_clusters_tab import images_of, make_cluster, post

# Each test image its own colour, so that no two are the same file (and the same row).
COLOURS = count(1)
BY_VLM = {
    "identifier": "ccip:feat.onnx+ollama:llava:13b",
    "answer": "reference unsure, asked ollama:llava:13b: Kenji | ...",
    "method": "vlm",
    "matcher": "ccip:feat.onnx",
    "threshold": 0.95,
    "scores": {"aiko": 0.412, "kenji": 0.7},
    "vlm": "ollama:llava:13b",
    "vlm_answer": "Kenji",
}


def image_with(studio: Studio, provenance: dict[str, Any] | None, slug: str = "kenji") -> int:
    stored = studio.root.put_image(Image.new("RGB", (20, 30), (next(COLOURS), 6, 7)))
    with studio.registry.session() as session:
        character = commands.get_character(session, slug)
        image, _ = commands.add_image(
            session, character.id, stored.sha256, stored.relpath, 20, 30, "frame",
            provenance=provenance,
        )  # fmt: skip
        return image.id


def test_details_and_the_gallery_view_show_the_vlm_decision_and_the_scores(studio: Studio):
    image_id = image_with(studio, {"source_id": 1, "identification": BY_VLM})
    why = studio.client.get(f"/images/{image_id}/details.json").json()["why"]
    assert why["method"] == "VLM" and why["vlm"] == "ollama:llava:13b"
    assert why["threshold"] == 0.95 and why["vlm_answer"] == "Kenji"
    # Best score first; neither reached the threshold, which is why the VLM was asked.
    assert why["scores"] == [
        {"character": "kenji", "score": 0.7, "passes": False},
        {"character": "aiko", "score": 0.412, "passes": False},
    ]
    page = studio.client.get(f"/gallery/{image_id}").text
    assert "Why it was assigned" in page
    assert "By <strong>VLM</strong> (ollama:llava:13b), since reference matching was unsure" in page
    assert "a match needs 0.950" in page and "<td>0.700</td>" in page
    assert 'The VLM answered: <span class="prompt">Kenji</span>' in page


def test_a_reference_match_names_its_matcher_and_the_passing_score(studio: Studio):
    record = {
        "identifier": "ccip:feat.onnx+ollama:llava:13b",
        "answer": "matched by reference: ...",
        "method": "reference",
        "matcher": "ccip:feat.onnx",
        "threshold": 0.9,
        "scores": {"aiko": 0.97},
    }
    image_id = image_with(studio, {"identification": record}, slug="aiko")
    why = studio.client.get(f"/images/{image_id}/details.json").json()["why"]
    assert why["method"] == "reference match" and why["matcher"] == "ccip:feat.onnx"
    assert why["scores"] == [{"character": "aiko", "score": 0.97, "passes": True}]
    page = studio.client.get(f"/gallery/{image_id}").text
    assert "By <strong>reference match</strong> (ccip:feat.onnx)" in page
    assert "reaches the threshold" in page


def test_an_image_from_a_labelled_cluster_says_a_person_named_it(studio: Studio):
    cluster_id = make_cluster(studio, crops=1)
    assert post(studio, f"/clusters/{cluster_id}/label", character="aiko").status_code == 200
    (image_id,) = [i.id for i in images_of(studio, "aiko")]
    why = studio.client.get(f"/images/{image_id}/details.json").json()["why"]
    assert why["cluster_id"] == cluster_id and why["method"] is None
    page = studio.client.get(f"/gallery/{image_id}").text
    assert f"candidate cluster {cluster_id} was named this character" in page


def test_older_records_and_images_without_one(studio: Studio):
    old = image_with(studio, {"identification": {"identifier": "ollama:x", "answer": "Kenji"}})
    why = studio.client.get(f"/images/{old}/details.json").json()["why"]
    assert why["method"] is None and why["scores"] == [] and why["answer"] == "Kenji"
    assert (
        'ollama:x answered: <span class="prompt">Kenji</span>'
        in studio.client.get(f"/gallery/{old}").text
    )
    bare = image_with(studio, None)
    assert studio.client.get(f"/images/{bare}/details.json").json()["why"] is None
    assert "Why it was assigned" not in studio.client.get(f"/gallery/{bare}").text


def test_a_malformed_record_shows_what_it_can_and_never_fails() -> None:
    assert why_assigned(None) is None and why_assigned([1]) is None
    assert why_assigned({"identification": "text"}) is None
    odd = why_assigned(
        {"identification": {"method": "guess", "threshold": "high", "scores": {"a": "x", "b": 1}}}
    )
    assert odd is not None and odd["method"] is None and odd["threshold"] is None
    assert odd["scores"] == [{"character": "b", "score": 1.0, "passes": False}]
    assert why_assigned({"identification": {"threshold": True}})["threshold"] is None
