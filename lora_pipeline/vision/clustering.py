"""New characters among the unrecognised: crops no character was recognised in, embedded and
clustered per project (HDBSCAN, scikit-learn) into candidate characters (FaceVault's scan →
cluster → label → export).

A run embeds the crops not yet embedded by this embedder, lets each new crop that looks like a
labelled or dismissed cluster join it (a labelled one's character gets it as a pending image),
then clusters everything still open afresh. Labelled and dismissed clusters never change but by
growing, so a person's decision survives every re-clustering; an open cluster keeps its id when
most of its crops fall together again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lora_pipeline.media.contact_sheet import contact_sheet
from lora_pipeline.media.images import encode_png, load_image
from lora_pipeline.media.store import DataRoot
from lora_pipeline.registry import commands
from lora_pipeline.registry.commands import clusters as cluster_commands
from lora_pipeline.registry.db import Registry
from lora_pipeline.registry.models import CandidateCluster, UnrecognisedCrop
from lora_pipeline.vision.ccip import unit_rows

Log = Callable[[str], None]
MIN_CLUSTER_SIZE = 3
# Cosine a new crop needs to the centroid of a decided cluster to join it.
JOIN_THRESHOLD = 0.9
SHEET_CROPS = 16
EMBED_BATCH = 32


class CropEmbedder(Protocol):
    """What embeds the crops: the identity model (CCIP-style or CLIP reference embedder)."""

    name: str

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass
class ClusterStats:
    crops: int = 0
    embedded: int = 0
    # Crops that joined a labelled or dismissed cluster, and images that made.
    joined: int = 0
    images_added: int = 0
    clusters: int = 0
    new_candidates: int = 0
    noise: int = 0


@dataclass(frozen=True)
class _Crop:
    id: int
    vector: np.ndarray
    cluster_id: int | None


def cluster_project(
    registry: Registry,
    root: DataRoot,
    project_slug: str,
    embedder: CropEmbedder,
    log: Log,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    join_threshold: float = JOIN_THRESHOLD,
) -> ClusterStats:
    """Cluster the project's unrecognised crops; see the module docstring."""
    stats = ClusterStats()
    with registry.session(readonly=True) as session:
        project_id = commands.get_project(session, project_slug).id
    stats.embedded = _embed_missing(registry, root, project_id, embedder)
    with registry.session() as session:
        crops, decided = _load(session, project_id, embedder.name)
        stats.crops = len(crops)
        free = [crop for crop in crops if crop.cluster_id is None or crop.cluster_id not in decided]
        free = _join_decided(session, free, decided, join_threshold, stats)
        groups = _hdbscan(free, min_cluster_size)
        stats.noise = len(free) - sum(len(group) for group in groups)
        kept = _save_open(session, project_id, embedder.name, free, groups, stats)
    _write_sheets(registry, root, project_slug, kept)
    log(
        f"project {project_slug}: {stats.crops} unrecognised crops, {stats.clusters} candidate "
        f"characters ({stats.new_candidates} new), {stats.joined} joined decided clusters"
    )
    return stats


def _embed_missing(
    registry: Registry, root: DataRoot, project_id: int, embedder: CropEmbedder
) -> int:
    with registry.session(readonly=True) as session:
        todo = [
            (crop.id, crop.path)
            for crop in session.scalars(
                _crops_query(project_id).where(
                    (UnrecognisedCrop.embedder.is_(None))
                    | (UnrecognisedCrop.embedder != embedder.name)
                )
            )
        ]
    for start in range(0, len(todo), EMBED_BATCH):
        batch = todo[start : start + EMBED_BATCH]
        vectors = unit_rows(embedder.embed([load_image(root.path(path)) for _, path in batch]))
        with registry.session() as session:
            ids = [crop_id for crop_id, _ in batch]
            cluster_commands.store_embeddings(
                session, embedder.name, dict(zip(ids, vectors, strict=True))
            )
    return len(todo)


def _crops_query(project_id: int) -> Any:
    return (
        select(UnrecognisedCrop)
        .where(UnrecognisedCrop.project_id == project_id)
        .order_by(UnrecognisedCrop.id)
    )


def _load(
    session: Session, project_id: int, embedder: str
) -> tuple[list[_Crop], dict[int, CandidateCluster]]:
    crops = [
        _Crop(row.id, np.asarray(row.embedding, dtype=np.float32), row.cluster_id)
        for row in session.scalars(_crops_query(project_id))
        if row.embedding is not None and row.embedder == embedder
    ]
    decided = {
        cluster.id: cluster
        for cluster in session.scalars(
            _clusters_query(project_id).where(CandidateCluster.status != "open")
        )
    }
    return crops, decided


def _clusters_query(project_id: int) -> Any:
    return select(CandidateCluster).where(CandidateCluster.project_id == project_id)


def _join_decided(
    session: Session,
    free: list[_Crop],
    decided: dict[int, CandidateCluster],
    threshold: float,
    stats: ClusterStats,
) -> list[_Crop]:
    """New crops that look like a decided cluster join it; the rest stay free."""
    usable = [c for c in decided.values() if c.centroid]
    if not usable or not free:
        return free
    centroids = unit_rows(np.asarray([c.centroid for c in usable], dtype=np.float32))
    similarity = np.stack([crop.vector for crop in free]) @ centroids.T
    best = similarity.argmax(axis=1)
    remaining = []
    joining: dict[int, list[int]] = {}
    for crop, index, row in zip(free, best, similarity, strict=True):
        if row[index] >= threshold:
            joining.setdefault(usable[index].id, []).append(crop.id)
        else:
            remaining.append(crop)
    for cluster_id, crop_ids in joining.items():
        cluster = cluster_commands.join_cluster(session, cluster_id, crop_ids)
        stats.joined += len(crop_ids)
        if cluster.status == "labelled":
            rows = [session.get(UnrecognisedCrop, crop_id) for crop_id in crop_ids]
            stats.images_added += len(cluster_commands.add_crop_images(session, cluster, rows))
    return remaining


def _hdbscan(crops: Sequence[_Crop], min_cluster_size: int) -> list[list[_Crop]]:
    """Groups of crops, largest first; crops in no group are noise."""
    if len(crops) < max(2, min_cluster_size):
        return []
    from sklearn.cluster import HDBSCAN

    vectors = np.stack([crop.vector for crop in crops]).astype(np.float64)
    # Euclidean distance between unit vectors orders pairs as cosine does.
    labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit_predict(vectors)
    groups: dict[int, list[_Crop]] = {}
    for crop, label in zip(crops, labels, strict=True):
        if label >= 0:
            groups.setdefault(int(label), []).append(crop)
    return sorted(groups.values(), key=lambda group: (-len(group), group[0].id))


def _save_open(
    session: Session,
    project_id: int,
    embedder: str,
    free: Sequence[_Crop],
    groups: Sequence[Sequence[_Crop]],
    stats: ClusterStats,
) -> list[int]:
    """Open clusters replaced by the new groups; an old id is kept for the group holding most
    of its crops. Returns the ids of the clusters written."""
    previous: dict[int, set[int]] = {}
    for crop in free:
        if crop.cluster_id is not None:
            previous.setdefault(crop.cluster_id, set()).add(crop.id)
    old_open = {
        c.id
        for c in session.scalars(
            _clusters_query(project_id).where(CandidateCluster.status == "open")
        )
    }
    # Every free crop starts unclustered; the groups below take theirs.
    session.execute(
        update(UnrecognisedCrop)
        .where(UnrecognisedCrop.id.in_([crop.id for crop in free]))
        .values(cluster_id=None)
    )
    kept: list[int] = []
    for group in groups:
        members = {crop.id for crop in group}
        reuse = _old_id(previous, old_open - set(kept), members)
        centroid = unit_rows(np.mean([crop.vector for crop in group], axis=0)[np.newaxis])[0]
        cluster = cluster_commands.save_cluster(
            session, project_id, embedder, sorted(members), centroid, reuse
        )
        stats.new_candidates += reuse is None
        kept.append(cluster.id)
    cluster_commands.remove_clusters(session, sorted(old_open - set(kept)))
    stats.clusters = len(kept)
    return kept


def _old_id(previous: dict[int, set[int]], available: set[int], members: set[int]) -> int | None:
    """The open cluster whose crops are mostly (over half) in this group, if any."""
    shared = {cid: len(previous.get(cid, set()) & members) for cid in available}
    best = max(shared, key=lambda cid: (shared[cid], -cid), default=None)
    if best is None or shared[best] * 2 <= len(previous.get(best, set())):
        return None
    return best


def _write_sheets(
    registry: Registry, root: DataRoot, project_slug: str, cluster_ids: Sequence[int]
) -> None:
    for cluster_id in cluster_ids:
        with registry.session(readonly=True) as session:
            paths = [c.path for c in cluster_commands.cluster_crops(session, cluster_id)]
        sheet = contact_sheet([load_image(root.path(p)) for p in paths[:SHEET_CROPS]])
        relpath = f"clusters/{project_slug}/{cluster_id}.png"
        root.dir("clusters", project_slug)
        root.write_bytes_atomic(relpath, encode_png(sheet))
        with registry.session() as session:
            cluster_commands.set_contact_sheet(session, cluster_id, relpath)
