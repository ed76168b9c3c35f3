"""Ingest faults: a source records the Dagster run that took it and when, so a run that died
can be told from one still going; a frame is unique per (source, frame index), so a rerun after
a kill never records a sampled frame twice.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The first frame of a frame's (source, index): earlier reruns recorded the others again.
_FIRST = (
    "(SELECT MIN(k.id) FROM frames k WHERE k.source_id = {f}.source_id "
    "AND k.frame_index = {f}.frame_index)"
)


def _drop_duplicate_frames() -> None:
    """Images made from a duplicate point at the first frame; then the duplicates go. Plain
    statements, so the offline SQL script for PostgreSQL holds them too."""
    first_of_image_frame = _FIRST.format(f="d")
    op.execute(
        "UPDATE images SET frame_id = (SELECT "
        + first_of_image_frame
        + " FROM frames d WHERE d.id = images.frame_id) WHERE frame_id IN "
        "(SELECT f.id FROM frames f WHERE f.id > " + _FIRST.format(f="f") + ")"
    )
    op.execute("DELETE FROM frames WHERE id > " + _FIRST.format(f="frames"))


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("run_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("started_at", sa.DateTime(), nullable=True))
    _drop_duplicate_frames()
    with op.batch_alter_table("frames") as batch:
        batch.create_unique_constraint(
            "uq_frames_source_id_frame_index", ["source_id", "frame_index"]
        )


def downgrade() -> None:
    with op.batch_alter_table("frames") as batch:
        batch.drop_constraint("uq_frames_source_id_frame_index", type_="unique")
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("started_at")
        batch.drop_column("run_id")
