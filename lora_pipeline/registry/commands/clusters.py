"""Unrecognised crops and the candidate characters (clusters) they fall into (issue 17 item 4).

Clustering itself (embeddings, HDBSCAN) lives in `vision.clustering`; these commands store what
it finds and what a person decides: label a cluster as a character (its crops become pending
images of that character) or dismiss it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lora_pipeline.registry.commands._rows import _existing_after_race, _get, _try_insert
from lora_pipeline.registry.commands._validate import (
    _int,
    _json,
    _relative_path,
    _sha256,
    _text,
)
from lora_pipeline.registry.commands.characters import add_character, get_character
from lora_pipeline.registry.commands.images import add_image
from lora_pipeline.registry.errors import ConflictError, InvalidInputError
from lora_pipeline.registry.models import (
    CandidateCluster,
    Character,
    Frame,
    Image,
    Project,
    Source,
    UnrecognisedCrop,
    utcnow,
)


def add_unrecognised_crop(
    session: Session,
    frame_id: int,
    sha256: str,
    path: str,
    width: int,
    height: int,
    provenance: dict[str, Any],
) -> tuple[UnrecognisedCrop, bool]:
    """Record a crop of the frame's project; the same picture again gives the first row."""
    frame = _get(session, Frame, frame_id, "frame")
    source = session.get(Source, frame.source_id)
    assert source is not None  # foreign key
    digest = _sha256(sha256)
    lookup = select(UnrecognisedCrop).where(
        UnrecognisedCrop.project_id == source.project_id, UnrecognisedCrop.sha256 == digest
    )
    existing = session.scalar(lookup)
    if existing is not None:
        return existing, False
    crop = UnrecognisedCrop(
        project_id=source.project_id,
        frame_id=frame.id,
        sha256=digest,
        path=_relative_path(path, "crop path"),
        width=_int(width, "width", minimum=1),
        height=_int(height, "height", minimum=1),
        provenance=_json(provenance, "provenance", dict),
    )
    if _try_insert(session, crop):
        return crop, True
    return _existing_after_race(session, lookup, "unrecognised crop"), False


def store_embeddings(session: Session, embedder: str, vectors: dict[int, Sequence[float]]) -> None:
    """Each crop's embedding (crop id → unit vector) by the named embedder."""
    name = _text(embedder, "embedder", required=True, max_length=64)
    for crop_id, vector in vectors.items():
        crop = _get(session, UnrecognisedCrop, crop_id, "unrecognised crop")
        crop.embedding = [float(v) for v in vector]
        crop.embedder = name


def save_cluster(
    session: Session,
    project_id: int,
    embedder: str,
    crop_ids: Sequence[int],
    centroid: Sequence[float],
    cluster_id: int | None = None,
) -> CandidateCluster:
    """Create an open cluster of these crops, or (given `cluster_id`) make an existing one
    hold exactly them; crops it held before and no longer do are left unclustered."""
    if cluster_id is None:
        cluster = CandidateCluster(project_id=project_id, embedder=embedder)
        session.add(cluster)
        session.flush()
    else:
        cluster = _get(session, CandidateCluster, cluster_id, "cluster")
        session.execute(
            update(UnrecognisedCrop)
            .where(UnrecognisedCrop.cluster_id == cluster.id)
            .values(cluster_id=None)
        )
    _assign(session, cluster, crop_ids)
    cluster.centroid = [float(v) for v in centroid]
    cluster.embedder = embedder
    return cluster


def join_cluster(session: Session, cluster_id: int, crop_ids: Sequence[int]) -> CandidateCluster:
    """Add crops to a cluster (a labelled one takes new crops that look like it)."""
    cluster = _get(session, CandidateCluster, cluster_id, "cluster")
    _assign(session, cluster, crop_ids)
    return cluster


def _assign(session: Session, cluster: CandidateCluster, crop_ids: Sequence[int]) -> None:
    if crop_ids:
        session.execute(
            update(UnrecognisedCrop)
            .where(
                UnrecognisedCrop.id.in_(list(crop_ids)),
                UnrecognisedCrop.project_id == cluster.project_id,
            )
            .values(cluster_id=cluster.id)
        )
    session.flush()
    cluster.size = len(cluster_crops(session, cluster.id))
    cluster.updated_at = utcnow()


def remove_clusters(session: Session, cluster_ids: Sequence[int]) -> None:
    """Delete open clusters that no longer exist (their crops left unclustered)."""
    for cluster_id in cluster_ids:
        cluster = _get(session, CandidateCluster, cluster_id, "cluster")
        if cluster.status != "open":
            raise ConflictError(f"cluster {cluster.id} is {cluster.status}; it stays")
        session.execute(
            update(UnrecognisedCrop)
            .where(UnrecognisedCrop.cluster_id == cluster.id)
            .values(cluster_id=None)
        )
        session.delete(cluster)


def set_contact_sheet(session: Session, cluster_id: int, relpath: str) -> None:
    cluster = _get(session, CandidateCluster, cluster_id, "cluster")
    cluster.contact_sheet = _relative_path(relpath, "contact sheet path")


def cluster_crops(session: Session, cluster_id: int) -> list[UnrecognisedCrop]:
    return list(
        session.scalars(
            select(UnrecognisedCrop)
            .where(UnrecognisedCrop.cluster_id == cluster_id)
            .order_by(UnrecognisedCrop.id)
        )
    )


def label_cluster(session: Session, cluster_id: int, character_slug: str) -> list[Image]:
    """The cluster is this character: its crops become pending images of it (returned)."""
    cluster = _open_cluster(session, cluster_id)
    character = get_character(session, character_slug)
    if character.project_id != cluster.project_id:
        raise InvalidInputError(
            f"character {character.slug!r} is not in the project of cluster {cluster.id}"
        )
    cluster.status, cluster.character_id, cluster.updated_at = "labelled", character.id, utcnow()
    return add_crop_images(session, cluster, cluster_crops(session, cluster.id))


def label_cluster_as_new(
    session: Session, cluster_id: int, slug: str, name: str, design_prompt: str = ""
) -> tuple[Character, list[Image]]:
    """The cluster is a character not yet in the cast: add it to the cluster's project, then
    label the cluster with it (the CLI's `--new` and the review app's form)."""
    cluster = _open_cluster(session, cluster_id)  # before a character is added for nothing
    project = _get(session, Project, cluster.project_id, "project")
    character = add_character(session, project.slug, slug, name, design_prompt=design_prompt)
    return character, label_cluster(session, cluster.id, character.slug)


def add_crop_images(
    session: Session, cluster: CandidateCluster, crops: Sequence[UnrecognisedCrop]
) -> list[Image]:
    """Crops of a labelled cluster as pending images of its character (new ones only)."""
    if cluster.character_id is None:
        return []
    added = []
    for crop in crops:
        frame = session.get(Frame, crop.frame_id)
        assert frame is not None  # foreign key
        image, created = add_image(
            session,
            cluster.character_id,
            crop.sha256,
            crop.path,
            crop.width,
            crop.height,
            "frame",
            provenance={**(crop.provenance or {}), "cluster_id": cluster.id},
            frame_id=frame.id,
            source_id=frame.source_id,
        )
        if created:
            added.append(image)
    return added


def dismiss_cluster(session: Session, cluster_id: int) -> CandidateCluster:
    """Not a character worth a LoRA: the cluster and its crops are set aside for good."""
    cluster = _open_cluster(session, cluster_id)
    cluster.status, cluster.updated_at = "dismissed", utcnow()
    return cluster


def get_cluster(session: Session, cluster_id: int) -> CandidateCluster:
    return _get(session, CandidateCluster, cluster_id, "cluster")


def _open_cluster(session: Session, cluster_id: int) -> CandidateCluster:
    cluster = get_cluster(session, cluster_id)
    if cluster.status != "open":
        raise ConflictError(f"cluster {cluster.id} is already {cluster.status}")
    return cluster


def project_clusters(
    session: Session, project_slug: str | None = None, statuses: Sequence[str] = ("open",)
) -> list[CandidateCluster]:
    """Clusters by size (largest first), of one project or all."""
    query = select(CandidateCluster).where(CandidateCluster.status.in_(list(statuses)))
    if project_slug is not None:
        query = query.join(Project, Project.id == CandidateCluster.project_id).where(
            Project.slug == project_slug
        )
    return list(session.scalars(query.order_by(CandidateCluster.size.desc(), CandidateCluster.id)))
