"""Run the benchmarks: `python -m benchmarks.run [NAME ...]`.

Each `benchmarks/bench_*.py` module has `run() -> Result`: its own figures, and the time of the
measured path against a baseline measured in the same process, so the ratio is comparable
across machines. Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    name: str
    measured_s: float
    baseline_s: float
    baseline: str
    figures: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.measured_s / self.baseline_s if self.baseline_s else float("nan")

    def report(self) -> str:
        lines = [f"## {self.name}"]
        lines += [f"  {key}: {value}" for key, value in self.figures.items()]
        lines.append(
            f"  measured {self.measured_s:.3f} s vs {self.baseline} {self.baseline_s:.3f} s "
            f"→ ratio {self.ratio:.2f}×"
        )
        return "\n".join(lines)


def discover() -> list[str]:
    folder = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(folder)]) if m.name.startswith("bench_")
    )


def main(names: list[str]) -> int:
    from lora_pipeline.logging_setup import quiet_ml_libraries

    quiet_ml_libraries()
    for name in names or discover():
        module = importlib.import_module(f"benchmarks.{name}")
        print(module.run().report(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
