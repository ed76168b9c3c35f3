"""Issue 17: clustering 10,000 crop embeddings into candidate characters (vision.clustering's
HDBSCAN step, grouping included) against scikit-learn's HDBSCAN fit alone on the same data."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.run import Result
from lora_pipeline.vision.ccip import unit_rows
from lora_pipeline.vision.clustering import _Crop, _hdbscan

COUNT, DIM, CHARACTERS = 10_000, 768, 20


def run() -> Result:
    from sklearn.cluster import HDBSCAN

    rng = np.random.default_rng(17)
    centres = rng.normal(size=(CHARACTERS, DIM))
    truth = rng.integers(0, CHARACTERS, COUNT)
    vectors = unit_rows(centres[truth] + rng.normal(scale=0.5, size=(COUNT, DIM)))
    crops = [_Crop(i, vectors[i], None) for i in range(COUNT)]

    start = time.perf_counter()
    HDBSCAN(min_cluster_size=3, copy=True).fit_predict(vectors.astype(np.float64))
    bare = time.perf_counter() - start
    start = time.perf_counter()
    groups = _hdbscan(crops, 3)
    measured = time.perf_counter() - start
    purity = sum(np.bincount(truth[[c.id for c in g]]).max() for g in groups)
    clustered = sum(len(g) for g in groups)
    return Result(
        "clustering 10,000 embeddings",
        measured,
        bare,
        "HDBSCAN fit alone",
        {
            "embeddings": f"{COUNT} x {DIM} ({CHARACTERS} characters)",
            "candidates": len(groups),
            "clustered": clustered,
            "purity": round(purity / max(clustered, 1), 4),
        },
    )
