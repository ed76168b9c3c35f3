"""Models loaded once per process: the VLM, the reference embedder and the eval's CLIP.

Loading a transformers model takes seconds to minutes and gigabytes, so each (model id, device)
is loaded once and shared by every caller and thread; `clear()` forgets them all so that the
memory can be given to training.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Loaded = TypeVar("Loaded")


class ModelCache(Generic[Loaded]):
    def __init__(self, load: Callable[[str, str], Loaded]) -> None:
        self._load = load
        self._loaded: dict[tuple[str, str], Loaded] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str, device: str) -> Loaded:
        """What `load(model_id, device)` returned the first time it was asked for."""
        key = (model_id, device)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._load(model_id, device)
            return self._loaded[key]

    def loaded(self) -> dict[tuple[str, str], Loaded]:
        with self._lock:
            return dict(self._loaded)

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
