"""The CCIP-style identity backend on tiny ONNX models with CCIP's inputs and outputs: features,
the metrics model's differences, reference matching through it and the eval's identity score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from lora_pipeline.config import Settings
from lora_pipeline.evaluation.scores import identity_similarity
from lora_pipeline.model_runtime import ModelRuntime
from lora_pipeline.vision.ccip import CcipEmbedder, load_ccip, parse_ccip_spec
from lora_pipeline.vision.identification import CharacterProfile, split_combined_spec
from lora_pipeline.vision.identifier_factory import build_identifier
from lora_pipeline.vision.onnx_models import ModelLoadError
from lora_pipeline.vision.reference import ReferenceImage
from lora_pipeline.vision.tiny_onnx import _save, build_tiny_ccip

RED, BLUE = (220, 30, 30), (30, 30, 220)


@pytest.fixture(scope="module")
def ccip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_ccip(tmp_path_factory.mktemp("ccip"))


def flat(colour: tuple[int, int, int], size: int = 40) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def test_features_and_differences_have_ccips_shapes(ccip) -> None:
    feat, metrics = ccip
    embedder = CcipEmbedder(feat, metrics)
    features = embedder.embed([flat(RED), flat(RED, 64), flat(BLUE)])
    assert features.shape == (3, 16) and embedder.size == 32
    similar = embedder.similarities(features[:1], features)
    # 1 − difference: the same colour is the same character, at any picture size.
    assert similar.shape == (1, 3)
    assert similar[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert similar[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert similar[0, 2] < 0.7
    # Without the metrics model: the cosine of the features, on its own scale.
    cosine = CcipEmbedder(feat).similarities(features[:1], features)
    assert cosine[0, 2] == pytest.approx(2 * similar[0, 2] - 1, abs=1e-4)


def test_a_model_without_ccips_input_is_refused_in_one_line(tmp_path: Path) -> None:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "flat",
        [value("input", TensorProto.FLOAT, ["batch", 16])],
        [value("output", TensorProto.FLOAT, ["batch", 16])],
    )
    path = _save(graph, tmp_path / "flat.onnx")
    with pytest.raises(ModelLoadError, match=r"must take \[N, 3, S, S\]"):
        CcipEmbedder(path)
    with pytest.raises(ModelLoadError, match="CCIP feature model not found"):
        CcipEmbedder(tmp_path / "missing.onnx")


def test_specs_parse_and_combine() -> None:
    assert parse_ccip_spec("ccip:/m/feat.onnx#/m/metrics.onnx") == (
        "/m/feat.onnx",
        "/m/metrics.onnx",
    )
    assert parse_ccip_spec("ccip:/m/feat.onnx") == ("/m/feat.onnx", None)
    with pytest.raises(ValueError, match="names no feature model"):
        parse_ccip_spec("ccip:#x")
    assert split_combined_spec("ccip:/f.onnx+ollama:http://h:1#llava") == (
        "ccip:/f.onnx",
        "ollama:http://h:1#llava",
    )
    assert split_combined_spec("ollama:http://h:1#llava") is None
    with pytest.raises(ValueError, match="invalid combined identifier"):
        split_combined_spec("ollama:http://h:1#llava+ccip:/f.onnx")


def test_reference_matching_through_ccip(ccip, tmp_path: Path) -> None:
    feat, metrics = ccip
    approved = tmp_path / "aiko.png"
    flat(RED).save(approved)
    references = {"aiko": [ReferenceImage("a" * 64, approved)], "kenji": []}
    identifier = build_identifier(
        f"ccip:{feat}#{metrics}",
        references=lambda slug: references[slug],
        reference_threshold=0.9,
        cache_dir=tmp_path / "cache",
    )
    assert identifier.name == "ccip:feat.onnx"
    candidates = [CharacterProfile("aiko", "Aiko", ""), CharacterProfile("kenji", "Kenji", "")]
    red, blue = identifier.identify([flat(RED, 50), flat(BLUE)], candidates)
    assert red.slugs == {"aiko"} and blue.slugs == frozenset()
    assert red.raw_answer.startswith("ccip:feat.onnx similarity (threshold 0.9): aiko 1.000")
    assert "no approved images yet: kenji" in blue.raw_answer


def test_the_eval_scores_identity_with_ccip(ccip) -> None:
    feat, metrics = ccip
    embedder = load_ccip(f"ccip:{feat}#{metrics}")
    same = identity_similarity(embedder, [flat(RED)], [flat(BLUE), flat(RED, 60)])
    other = identity_similarity(embedder, [flat(BLUE)], [flat(RED)])
    assert same == pytest.approx(1.0, abs=1e-5) and other < 0.7
    settings = Settings(identity_model=f"ccip:{feat}#{metrics}")
    scorers = ModelRuntime(settings).eval_scorers()
    assert isinstance(scorers.embedder, CcipEmbedder)
    # A combined identifier's matching half is the eval's identity model by default.
    combined = Settings(identifier=f"ccip:{feat}+ollama:http://127.0.0.1:1#llava")
    assert combined.identity_model_id() == f"ccip:{feat}"
    assert np.isfinite(same)
