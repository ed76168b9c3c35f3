"""What this process holds in memory: RSS (and its peak) from Linux, and CUDA's allocated
bytes when torch is loaded with a GPU. GPU steps record it before and after their work, so a
step that leaves models on the device shows it in its metadata.

torch is never imported here: a process that has not loaded it has nothing on a GPU.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

MB = 2**20


def process_memory() -> dict[str, float]:
    """RSS now and at its peak, in MB; CUDA allocated now and at its peak since the last
    `reset_cuda_peak()`, in MB, when torch has CUDA."""
    figures = {
        "rss_mb": round(current_rss_kb() / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        figures["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / MB, 1)
        figures["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return figures


def reset_cuda_peak() -> None:
    """Start CUDA's peak count afresh, so the next figures are one step's own."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def current_rss_kb() -> float:
    """VmRSS of this process (Linux's /proc), in kB; NaN elsewhere."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return float("nan")


def describe_memory(before: dict[str, float], after: dict[str, float]) -> str:
    """One log line: each figure before → after."""
    parts = [f"{key} {before.get(key, 0.0):.1f} → {value:.1f}" for key, value in after.items()]
    return "process memory: " + ", ".join(parts)
