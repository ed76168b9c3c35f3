"""The feedback loop: a character's locked seed, the image a duplicate generation copied, run ids
on datasets and releases, the image a regeneration produced, and a profile's video workflow.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("characters") as batch:
        # A seed is only reused for every image when the user pins it ("lock seed").
        batch.add_column(
            sa.Column("seed_locked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("generation_jobs") as batch:
        batch.add_column(sa.Column("duplicate_of_image_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("regeneration_image_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_feedback_regeneration_image_id_images",
            "images",
            ["regeneration_image_id"],
            ["id"],
        )
    for table in ("dataset_versions", "lora_releases"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("run_id", sa.String(64), nullable=True))
    with op.batch_alter_table("generation_profiles") as batch:
        batch.add_column(sa.Column("video_workflow_template", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generation_profiles") as batch:
        batch.drop_column("video_workflow_template")
    for table in ("lora_releases", "dataset_versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("run_id")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("fk_feedback_regeneration_image_id_images", type_="foreignkey")
        batch.drop_column("regeneration_image_id")
    with op.batch_alter_table("generation_jobs") as batch:
        batch.drop_column("duplicate_of_image_id")
    with op.batch_alter_table("characters") as batch:
        batch.drop_column("seed_locked")
