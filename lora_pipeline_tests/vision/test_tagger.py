"""The WD14-style ONNX tagger, run by the real onnxruntime on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_pipeline.vision.onnx_models import ModelLoadError
from lora_pipeline.vision.tagger import OnnxTagger, TagScores, load_tag_csv
from lora_pipeline.vision.tiny_onnx import TinyTag, build_tiny_tagger

TAGS = [
    TinyTag("general", 9, bias=1.0),
    TinyTag("explicit", 9, bias=-5.0),
    TinyTag("1girl", 0, bias=4.0),
    TinyTag("red_theme", 0, rgb_weights=(20.0, -10.0, -10.0), bias=-5.0),
    TinyTag("blue_theme", 0, rgb_weights=(-10.0, -10.0, 20.0), bias=-5.0),
    TinyTag("faint", 0, bias=-0.5),  # sigmoid(-0.5) = 0.38: just above 0.35
    TinyTag("aiko_(demo)", 4, rgb_weights=(0.0, 0.0, 20.0), bias=-18.2),  # 0.858 when all blue
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger"), TAGS, input_size=32)


def test_tags_by_colour_with_the_wd14_thresholds(model: Path) -> None:
    tagger = OnnxTagger(model, batch_size=2)
    assert tagger.name == "wd14:model.onnx" and (tagger.width, tagger.height) == (32, 32)
    red, blue, grey = (Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (90,) * 3))
    results = tagger.tag([red, blue, grey])  # two batches: 2 + 1
    assert [r.rating for r in results] == ["general"] * 3
    assert [name for name, _ in results[0].general] == ["red_theme", "1girl", "faint"]
    assert results[0].character == ()
    assert [name for name, _ in results[1].general] == ["blue_theme", "1girl", "faint"]
    assert results[1].character == (("aiko_(demo)", 0.8581),)
    assert results[1].names == ["aiko_(demo)", "blue_theme", "1girl", "faint"]
    assert results[2].general == (("1girl", 0.982), ("faint", 0.3775))


def test_padding_on_white_counts(model: Path) -> None:
    # A red 40 x 20 strip is padded to a white square: blue and green come up to one half,
    # which is still red enough for red_theme (20 - 5 - 5 - 5 = 5).
    (strip,) = OnnxTagger(model).tag([Image.new("RGB", (40, 20), (255, 0, 0))])
    assert strip.general[0] == ("red_theme", 0.9933)


def test_thresholds_are_configurable(model: Path) -> None:
    blue = Image.new("RGB", (32, 32), (0, 0, 255))
    strict = OnnxTagger(model, general_threshold=0.9, character_threshold=0.99).tag([blue])[0]
    assert strict == TagScores((("blue_theme", 1.0), ("1girl", 0.982)), (), "general")


def test_preprocessing_is_wd14s(model: Path) -> None:
    tagger = OnnxTagger(model)
    array = tagger.prepare(Image.new("RGB", (32, 16), (255, 0, 0)))
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    # BGR: the red image's channel 2 is 255, white padding is 255 everywhere.
    assert array[16, 16].tolist() == [0.0, 0.0, 255.0]
    assert array[0, 16].tolist() == [255.0, 255.0, 255.0]


def test_tag_csv_and_model_errors(model: Path, tmp_path: Path) -> None:
    assert [t.name for t in load_tag_csv(model.parent / "selected_tags.csv")][:3] == [
        "general",
        "explicit",
        "1girl",
    ]
    with pytest.raises(ModelLoadError, match="tag list not found"):
        OnnxTagger(model, tmp_path / "none.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("tag_id,name,category,count\n0,one,0,1\n")
    with pytest.raises(ModelLoadError, match="scores 7 tags but wrong.csv lists 1"):
        OnnxTagger(model, wrong)
    headless = tmp_path / "headless.csv"
    headless.write_text("a,b\n1,2\n")
    with pytest.raises(ModelLoadError, match="header"):
        load_tag_csv(headless)
    bad_category = tmp_path / "bad.csv"
    bad_category.write_text("tag_id,name,category,count\n0,one,general,1\n")
    with pytest.raises(ModelLoadError, match="line 2: category must be an integer"):
        load_tag_csv(bad_category)
    with pytest.raises(ModelLoadError, match="tagger model not found"):
        OnnxTagger(tmp_path / "none.onnx", model.parent / "selected_tags.csv")
    with pytest.raises(ModelLoadError, match="between 0 and 1"):
        OnnxTagger(model, general_threshold=1.5)
