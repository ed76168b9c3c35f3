"""Tiny ONNX models with known behaviour, built offline with onnx.helper.

They run through the real onnxruntime (and insightface) code paths in tests, benchmarks and
demos, where no real model may be downloaded:
- a WD14-style tagger that scores each tag from the image's mean colour;
- a YOLO-style face detector that finds a bright block in one 16 × 16 cell, and the same on any
  grid (persons and heads of drawn test frames);
- a CCIP-style character embedder and its metrics model (mean colour, projected);
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
    size_of = box_size or (lambda row, col: (float(CELL), float(CELL)))
    return build_tiny_grid_detector(
        path, (input_size, input_size), (CELL, CELL), size_of, "tiny_face_detector"
    )


def build_tiny_grid_detector(
    path: Path,
    input_hw: tuple[int, int],
    cell_hw: tuple[int, int],
    box_size: BoxSize | None = None,
    graph_name: str = "tiny_grid_detector",
) -> Path:
    """A YOLOv8-layout detector `[1, 3, H, W]` → `[1, 5, cells]` on a grid of `cell_hw` cells.

    Each cell scores its mean brightness (0–1); its box is centred on the cell, the cell's size
    unless `box_size(row, col)` says otherwise. A bright figure filling a cell of a dark frame is
    one detection with exactly the cell's box: tests draw persons and heads that way.
    """
    from onnx import TensorProto, helper

    (height, width), (cell_h, cell_w) = input_hw, cell_hw
    rows, cols = height // cell_h, width // cell_w
    size_of = box_size or (lambda row, col: (float(cell_w), float(cell_h)))
    boxes = np.zeros((1, 4, rows * cols))
    for row in range(rows):
        for col in range(cols):
            box_w, box_h = size_of(row, col)
            centre = (col * cell_w + cell_w / 2, row * cell_h + cell_h / 2)
            boxes[0, :, row * cols + col] = (*centre, box_w, box_h)
    nodes = [
        helper.make_node("Conv", ["images", "kernel"], ["brightness"], strides=[cell_h, cell_w]),
        helper.make_node("Clip", ["brightness", "zero", "one"], ["score_map"]),
        helper.make_node("Reshape", ["score_map", "score_shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    initializers = [
        _tensor("kernel", np.full((1, 3, cell_h, cell_w), 1.0 / (3 * cell_h * cell_w))),
        _tensor("zero", np.array(0.0)),
        _tensor("one", np.array(1.0)),
        _tensor("score_shape", np.array([1, 1, rows * cols]), np.int64),
        _tensor("boxes", boxes),
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, rows * cols])],
        initializers,
    )
    return _save(graph, path)


def build_tiny_ccip(folder: Path, input_size: int = 32, dim: int = 16) -> tuple[Path, Path]:
    """A CCIP-style pair: `feat.onnx` `[N, 3, S, S]` → `[N, dim]` and `metrics.onnx`
    `[N, dim]` → `[N, N]` differences.

    The features are the image's mean (normalised) colour through a fixed orthonormal
    projection, so their cosine is the cosine of the mean colours: figures of one colour match,
    of different colours do not. The difference is (1 − cosine) / 2, 0 for the same character.
    """
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    basis, _ = np.linalg.qr(np.random.default_rng(17).normal(size=(dim, 3)))
    value = helper.make_tensor_value_info
    features = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["mean", "projection"], ["output"]),
        ],
        "tiny_ccip_feat",
        [value("input", TensorProto.FLOAT, ["batch", 3, input_size, input_size])],
        [value("output", TensorProto.FLOAT, ["batch", dim])],
        [_tensor("projection", basis.T)],
    )
    metrics = helper.make_graph(
        [
            helper.make_node("LpNormalization", ["input"], ["unit"], axis=1, p=2),
            helper.make_node("Transpose", ["unit"], ["unit_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["unit", "unit_t"], ["cosine"]),
            helper.make_node("Sub", ["one", "cosine"], ["distance"]),
            helper.make_node("Mul", ["distance", "half"], ["output"]),
        ],
        "tiny_ccip_metrics",
        [value("input", TensorProto.FLOAT, ["batch", dim])],
        [value("output", TensorProto.FLOAT, ["batch", "batch"])],
        [_tensor("one", np.array(1.0)), _tensor("half", np.array(0.5))],
    )
    return _save(features, folder / "feat.onnx"), _save(metrics, folder / "metrics.onnx")


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
