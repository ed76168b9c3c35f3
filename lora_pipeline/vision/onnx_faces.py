"""A generic YOLO-style ONNX detector: anime face, head and person detectors ship this way.

Expected model I/O:
- input: one float32 image tensor, NCHW `[1, 3, H, W]` (or NHWC `[1, H, W, 3]`), RGB scaled to
  0–1. H and W are read from the model; a dynamic size uses `input_size` (640 by default). The
  image is letterboxed: resized to fit with its aspect ratio kept, centred on grey (114).
- output (the first one): candidate boxes in input pixels, either `[1, N, C]` (YOLOv5 style,
  one row per candidate) or `[1, C, N]` (YOLOv8 style, one column per candidate; chosen when
  C < N, or forced with `layout`). Columns: centre x, centre y, width, height, score, then
  anything else (class scores, landmarks) which is ignored unless `objectness` is set: then the
  score is column 4 (objectness) times the best of columns 5 and up (YOLOv5 class scores).
Boxes above `score_threshold` go through non-maximum suppression and are mapped back to the
pixels of the original image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lora_pipeline.vision.faces import FaceBox
from lora_pipeline.vision.onnx_models import ModelLoadError, fixed_dim, open_session

DEFAULT_INPUT_SIZE = 640
LETTERBOX_GREY = 114
LAYOUTS = ("auto", "rows", "columns")


class OnnxFaceDetector:
    """Faces from a YOLO-style ONNX model; see the module docstring for the expected I/O."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.45,
        input_size: int = DEFAULT_INPUT_SIZE,
        objectness: bool = False,
        layout: str = "auto",
        device: str = "auto",
        what: str = "face detector",
    ) -> None:
        # `what` names the model in errors: the same YOLO decoding serves person and head
        # detectors (anime person/head/face detectors ship in this one layout).
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < iou_threshold <= 1.0:
            raise ModelLoadError("face detector thresholds must lie between 0 and 1")
        if layout not in LAYOUTS:
            raise ModelLoadError(f"face detector layout must be one of {LAYOUTS}, got {layout!r}")
        self.path = Path(model_path).expanduser()
        self.session = open_session(self.path, what, device)
        self.name = f"onnx:{self.path.name}"
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.objectness = objectness
        self.layout = layout
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.channels_first, self.height, self.width = _input_geometry(
            model_input.shape, input_size, self.path
        )

    def detect(self, image: Image.Image) -> list[FaceBox]:
        tensor, scale, left, top = self._letterbox(image)
        (raw, *_) = self.session.run(None, {self.input_name: tensor})
        rows = _candidate_rows(np.asarray(raw, dtype=np.float32), self.layout, self.path)
        scores = rows[:, 4]
        if self.objectness and rows.shape[1] > 5:
            scores = scores * rows[:, 5:].max(axis=1)
        chosen = scores >= self.score_threshold
        rows, scores = rows[chosen], scores[chosen]
        half_w, half_h = np.maximum(rows[:, 2], 0) / 2, np.maximum(rows[:, 3], 0) / 2
        corners = np.stack(
            [rows[:, 0] - half_w, rows[:, 1] - half_h, rows[:, 0] + half_w, rows[:, 1] + half_h],
            axis=1,
        )
        keep = non_max_suppression(corners, scores, self.iou_threshold)
        # Undo the letterbox: remove the padding, then the resize.
        corners = (corners[keep] - np.array([left, top, left, top], dtype=np.float32)) / scale
        return [
            FaceBox(float(x1), float(y1), float(x2), float(y2), float(score))
            for (x1, y1, x2, y2), score in zip(corners, scores[keep], strict=True)
        ]

    def _letterbox(self, image: Image.Image) -> tuple[np.ndarray, float, int, int]:
        rgb = image.convert("RGB")
        scale = min(self.width / rgb.width, self.height / rgb.height)
        new_w = max(1, round(rgb.width * scale))
        new_h = max(1, round(rgb.height * scale))
        left, top = (self.width - new_w) // 2, (self.height - new_h) // 2
        canvas = Image.new("RGB", (self.width, self.height), (LETTERBOX_GREY,) * 3)
        resized = rgb if (new_w, new_h) == rgb.size else rgb.resize((new_w, new_h), Image.BILINEAR)
        canvas.paste(resized, (left, top))
        pixels = np.asarray(canvas, dtype=np.float32) / 255.0
        tensor = pixels.transpose(2, 0, 1) if self.channels_first else pixels
        return np.ascontiguousarray(tensor[np.newaxis]), scale, left, top


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices of the boxes kept, best score first; overlaps above the threshold are dropped."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(
            boxes[best, 0], boxes[rest, 0]
        )
        inter_h = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(
            boxes[best, 1], boxes[rest, 1]
        )
        inter = np.maximum(inter_w, 0) * np.maximum(inter_h, 0)
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return keep


def _input_geometry(shape: list, input_size: int, path: Path) -> tuple[bool, int, int]:
    if len(shape) != 4:
        raise ModelLoadError(f"face detector {path.name} must take a 4-d image tensor: {shape}")
    if fixed_dim(shape, 1) == 3:
        channels_first, h_index, w_index = True, 2, 3
    elif fixed_dim(shape, 3) == 3:
        channels_first, h_index, w_index = False, 1, 2
    else:
        raise ModelLoadError(f"face detector {path.name} input has no 3-channel axis: {shape}")
    height = fixed_dim(shape, h_index) or input_size
    width = fixed_dim(shape, w_index) or input_size
    return channels_first, height, width


def _candidate_rows(raw: np.ndarray, layout: str, path: Path) -> np.ndarray:
    table = raw[0] if raw.ndim == 3 else raw
    if table.ndim != 2:
        raise ModelLoadError(f"face detector {path.name} output must be [1, N, C] or [1, C, N]")
    if table.size == 0:
        return np.zeros((0, 5), dtype=np.float32)
    columns_layout = layout == "columns" or (layout == "auto" and table.shape[0] < table.shape[1])
    rows = table.T if columns_layout else table
    if rows.shape[1] < 5:
        raise ModelLoadError(
            f"face detector {path.name} gives {rows.shape[1]} values per box; need cx, cy, w, h, "
            "score"
        )
    return rows
