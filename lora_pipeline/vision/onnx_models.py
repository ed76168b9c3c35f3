"""Opening ONNX models with onnxruntime: providers, clear errors, fixed input sizes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_pipeline.errors import PipelineError, first_line


class ModelLoadError(PipelineError, ValueError):
    """A model file is missing, unreadable, or does not have the expected inputs and outputs."""


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU and the device allows it, else the CPU."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    wants_gpu = device == "auto" or device.startswith("cuda")
    if wants_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: Path, what: str, device: str = "auto") -> Any:
    """An onnxruntime InferenceSession for `path`, or ModelLoadError naming the file."""
    import onnxruntime

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{what} model not found: {path}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the CPU fallback warnings are noise in run logs
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=onnx_providers(device)
        )
    except Exception as error:  # onnxruntime raises its own unrelated exception types
        raise ModelLoadError(f"cannot load {what} model {path}: {first_line(error)}") from error


def fixed_dim(shape: Sequence[Any], index: int) -> int | None:
    """The size of one input dimension when the model fixes it (not a name or None)."""
    value = shape[index] if index < len(shape) else None
    return value if isinstance(value, int) and value > 0 else None
