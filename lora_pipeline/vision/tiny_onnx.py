"""Tiny ONNX models with known behaviour, built offline with onnx.helper.

They run through the real onnxruntime (and insightface) code paths in tests, benchmarks and
demos, where no real model may be downloaded:
- a WD14-style tagger that scores each tag from the image's mean colour;
- a YOLO-style face detector that finds a bright block in one 16 × 16 cell;
- an insightface SCRFD detector (9 outputs) that does the same at stride 16.
onnx writes an IR version newer than onnxruntime reads, so every model is saved as IR 8.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_pipeline.files import atomic_path

IR_VERSION = 8
OPSET = 17
CELL = 16


@dataclass(frozen=True)
class TinyTag:
    """A tag whose score is sigmoid(weights · mean RGB in 0–1 + bias)."""

    name: str
    category: int
    rgb_weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bias: float = 0.0


def build_tiny_tagger(folder: Path, tags: Sequence[TinyTag], input_size: int = 32) -> Path:
    """`model.onnx` + `selected_tags.csv` in `folder`; returns the model path."""
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    # The model sees BGR, like the released WD14 taggers: store the weights in that order.
    weights = np.array([[t.rgb_weights[2], t.rgb_weights[1], t.rgb_weights[0]] for t in tags])
    nodes = [
        helper.make_node("Mul", ["input", "inv255"], ["unit"]),
        helper.make_node("ReduceMean", ["unit"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["mean", "weights"], ["logits"]),
        helper.make_node("Add", ["logits", "bias"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["output"]),
    ]
    initializers = [
        _tensor("inv255", np.array(1.0 / 255.0)),
        _tensor("weights", weights.T),
        _tensor("bias", np.array([t.bias for t in tags])),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_tagger",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", input_size, input_size, 3]
            )
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(tags)])],
        initializers,
    )
    model_path = _save(graph, folder / "model.onnx")
    with (folder / "selected_tags.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, tag in enumerate(tags):
            writer.writerow([index, tag.name, tag.category, 1000 - index])
    return model_path


BoxSize = Callable[[int, int], tuple[float, float]]


def build_tiny_face_detector(
    path: Path, input_size: int = 64, box_size: BoxSize | None = None
) -> Path:
    """A YOLOv8-layout detector `[1, 3, S, S]` → `[1, 5, cells]`.

    Each 16 × 16 cell scores its mean brightness (0–1); its box is centred on the cell with the
    size `box_size(row, col)` (16 × 16 by default), so a bright block in one cell on a dark image
    gives exactly one face of a known size.
    """
    from onnx import TensorProto, helper

    grid = input_size // CELL
    size_of = box_size or (lambda row, col: (float(CELL), float(CELL)))
    boxes = np.zeros((1, 4, grid * grid))
    for row in range(grid):
        for col in range(grid):
            width, height = size_of(row, col)
            boxes[0, :, row * grid + col] = (
                col * CELL + CELL / 2,
                row * CELL + CELL / 2,
                width,
                height,
            )
    nodes = [
        helper.make_node("Conv", ["images", "kernel"], ["brightness"], strides=[CELL, CELL]),
        helper.make_node("Clip", ["brightness", "zero", "one"], ["score_map"]),
        helper.make_node("Reshape", ["score_map", "score_shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    initializers = [
        _tensor("kernel", np.full((1, 3, CELL, CELL), 1.0 / (3 * CELL * CELL))),
        _tensor("zero", np.array(0.0)),
        _tensor("one", np.array(1.0)),
        _tensor("score_shape", np.array([1, 1, grid * grid]), np.int64),
        _tensor("boxes", boxes),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_face_detector",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [1, 3, input_size, input_size]
            )
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, grid * grid])],
        initializers,
    )
    return _save(graph, path)


def build_tiny_scrfd(
    folder: Path, input_size: int = 64, box_cells: float = 1.0, name: str = "det_tiny.onnx"
) -> Path:
    """An insightface SCRFD detector (strides 8/16/32, 2 anchors, keypoints: 9 outputs).

    Only stride 16 scores: each cell its mean brightness after SCRFD's (px − 127.5) / 128
    normalisation, clipped to 0–1. Its box starts at the anchor (the cell's top-left corner)
    and spans `box_cells` cells, so a white 16 × 16 block on black is exactly one face.
    """
    from onnx import TensorProto, helper

    nodes, initializers, outputs = [], [], {}
    for stride in (8, 16, 32):
        grid = input_size // stride
        anchors = grid * grid * 2
        weight = 1.0 / (3 * stride * stride) if stride == CELL else 0.0
        initializers += [
            _tensor(f"kernel{stride}", np.full((1, 3, stride, stride), weight)),
            _tensor(f"shape{stride}", np.array([grid * grid, 1]), np.int64),
            _tensor(f"anchor_shape{stride}", np.array([anchors, 1]), np.int64),
            _tensor(f"bbox{stride}", np.tile([0.0, 0.0, box_cells, box_cells], (anchors, 1))),
            _tensor(f"kps{stride}", np.zeros((anchors, 10))),
        ]
        nodes += [
            helper.make_node(
                "Conv", ["input.1", f"kernel{stride}"], [f"mean{stride}"], strides=[stride, stride]
            ),
            helper.make_node("Clip", [f"mean{stride}", "zero", "one"], [f"clipped{stride}"]),
            helper.make_node("Reshape", [f"clipped{stride}", f"shape{stride}"], [f"cells{stride}"]),
            # Two anchors per cell, stored one after the other as SCRFD decodes them.
            helper.make_node(
                "Concat", [f"cells{stride}", f"cells{stride}"], [f"pairs{stride}"], axis=1
            ),
            helper.make_node(
                "Reshape", [f"pairs{stride}", f"anchor_shape{stride}"], [f"score_{stride}"]
            ),
            helper.make_node("Identity", [f"bbox{stride}"], [f"bbox_{stride}"]),
            helper.make_node("Identity", [f"kps{stride}"], [f"kps_{stride}"]),
        ]
        outputs[stride] = anchors
    initializers += [_tensor("zero", np.array(0.0)), _tensor("one", np.array(1.0))]
    value = helper.make_tensor_value_info
    graph_outputs = (
        [value(f"score_{s}", TensorProto.FLOAT, [n, 1]) for s, n in outputs.items()]
        + [value(f"bbox_{s}", TensorProto.FLOAT, [n, 4]) for s, n in outputs.items()]
        + [value(f"kps_{s}", TensorProto.FLOAT, [n, 10]) for s, n in outputs.items()]
    )
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [value("input.1", TensorProto.FLOAT, [1, 3, input_size, input_size])],
        graph_outputs,
        initializers,
    )
    folder.mkdir(parents=True, exist_ok=True)
    return _save(graph, folder / name)


def _tensor(name: str, values: np.ndarray, dtype: type = np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    with atomic_path(path) as temporary:
        onnx.save(model, str(temporary))
    return path
