"""Candidate characters found among the unrecognised: the crops of persons no character was
recognised in, and the clusters (candidate characters) they fall into (issue 17 item 4).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "candidate_clusters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("contact_sheet", sa.Text(), nullable=True),
        sa.Column("centroid", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("embedder", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_candidate_clusters_project_id_projects")
        ),
        sa.ForeignKeyConstraint(
            ["character_id"],
            ["characters.id"],
            name=op.f("fk_candidate_clusters_character_id_characters"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidate_clusters")),
    )
    op.create_index(
        op.f("ix_candidate_clusters_project_id"), "candidate_clusters", ["project_id"]
    )
    op.create_table(
        "unrecognised_crops",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("embedding", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("embedder", sa.String(64), nullable=True),
        sa.Column("cluster_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_unrecognised_crops_project_id_projects")
        ),
        sa.ForeignKeyConstraint(
            ["frame_id"], ["frames.id"], name=op.f("fk_unrecognised_crops_frame_id_frames")
        ),
        sa.ForeignKeyConstraint(
            ["cluster_id"],
            ["candidate_clusters.id"],
            name=op.f("fk_unrecognised_crops_cluster_id_candidate_clusters"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unrecognised_crops")),
        sa.UniqueConstraint(
            "project_id", "sha256", name=op.f("uq_unrecognised_crops_project_id_sha256")
        ),
    )
    op.create_index(
        op.f("ix_unrecognised_crops_project_id"), "unrecognised_crops", ["project_id"]
    )
    op.create_index(
        op.f("ix_unrecognised_crops_cluster_id"), "unrecognised_crops", ["cluster_id"]
    )


def downgrade() -> None:
    op.drop_table("unrecognised_crops")
    op.drop_table("candidate_clusters")
