"""Ingest: perceptual hashes on frames and images, frame generation parameters, and the
ComfyUI output files already seen.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns only: SQLite adds them in place, existing rows get NULL (computed later).
    with op.batch_alter_table("frames") as batch:
        batch.add_column(sa.Column("phash", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("generation_params", sa.JSON(), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("phash", sa.String(length=16), nullable=True))
    op.create_table(
        "comfyui_output_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("relpath", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"], ["sources.id"], name=op.f("fk_comfyui_output_files_source_id_sources")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comfyui_output_files")),
        sa.UniqueConstraint(
            "relpath",
            "size",
            "mtime_ns",
            name=op.f("uq_comfyui_output_files_relpath_size_mtime_ns"),
        ),
    )


def downgrade() -> None:
    op.drop_table("comfyui_output_files")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("phash")
    with op.batch_alter_table("frames") as batch:
        batch.drop_column("generation_params")
        batch.drop_column("phash")
