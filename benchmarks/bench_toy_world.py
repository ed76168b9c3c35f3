"""Issue 19: does training learn, and how fast? The demo character's identity score (the toy
identity model, her drawings as references) of what the base model draws with a LoRA trained
for 0, 25, 50, 100 and 150 steps by the project's trainer (the demo's settings), as a table and
a PNG plot, and the training time to the first step count that reaches the demo's gate, against
the demo's full 150-step training measured in the same process (ratio: the share of the demo's
training a studio needs to pass the gate on this machine).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.run import Result
from lora_pipeline.generation.local import LoraSpec
from lora_pipeline.toy_world.probe import GATE_MIN_IDENTITY, GATE_STEPS, LearningProbe

STEPS = (25, 50, 100, GATE_STEPS)
PLOT = Path(tempfile.gettempdir()) / "lora_pipeline_bench" / "toy_world_identity.png"


def run() -> Result:
    with tempfile.TemporaryDirectory() as work:
        probe = LearningProbe(Path(work))
        scores: dict[int, float] = {0: probe.identity(None)}
        seconds: dict[int, float] = {0: 0.0}
        for steps in STEPS:
            start = time.perf_counter()
            lora = probe.train(f"steps-{steps}", steps)
            seconds[steps] = time.perf_counter() - start
            scores[steps] = probe.identity(LoraSpec(lora, 1.0))
    passing = [s for s in STEPS if scores[s] >= GATE_MIN_IDENTITY]
    first = passing[0] if passing else STEPS[-1]
    _plot(scores, PLOT)
    figures: dict[str, float | int | str] = {
        f"identity at {s} steps": f"{scores[s]:.3f} ({seconds[s]:.1f} s training)" for s in scores
    }
    figures["gate"] = f"identity >= {GATE_MIN_IDENTITY}"
    figures["first step count that passes"] = first if passing else "none of them"
    figures["plot"] = str(PLOT)
    return Result(
        name="toy world: identity vs training steps (CPU)",
        measured_s=seconds[first],
        baseline_s=seconds[STEPS[-1]],
        baseline=f"the demo's {STEPS[-1]}-step training",
        figures=figures,
    )


def _plot(scores: dict[int, float], path: Path, width: int = 480, height: int = 320) -> None:
    """Identity (0..1, up) against steps (right), with the gate as a dashed line."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 50, 20, width - 20, height - 40
    most = max(scores)

    def point(steps: int, score: float) -> tuple[float, float]:
        return (
            left + (right - left) * steps / most,
            bottom - (bottom - top) * max(0.0, min(1.0, score)),
        )

    draw.rectangle([left, top, right, bottom], outline="black")
    gate_y = point(0, GATE_MIN_IDENTITY)[1]
    for x in range(left, right, 8):
        draw.line([x, gate_y, x + 4, gate_y], fill="red")
    draw.text((right - 70, gate_y - 14), f"gate {GATE_MIN_IDENTITY}", fill="red")
    line = [point(s, scores[s]) for s in sorted(scores)]
    draw.line(line, fill="blue", width=2)
    for (x, y), steps in zip(line, sorted(scores), strict=True):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill="blue")
        draw.text((x - 8, bottom + 6), str(steps), fill="black")
    draw.text((left, bottom + 22), "training steps", fill="black")
    for value in (0.0, 0.5, 1.0):
        draw.text((8, point(0, value)[1] - 6), f"{value:.1f}", fill="black")
    draw.text((left + 4, top + 4), "identity (toy identity model)", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
