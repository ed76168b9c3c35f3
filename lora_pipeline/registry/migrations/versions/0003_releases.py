"""Releases: one active release per character and checkpoint, one active baseline release per
checkpoint, the release a retrain continued from, and per-project settings (eval prompts,
gate thresholds, licence fields).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status = 'active'")
ACTIVE_BASELINE = sa.text("status = 'active' AND scope = 'baseline'")


def upgrade() -> None:
    # Existing projects get empty settings, that is the defaults.
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("settings", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
    op.drop_index(
        "uq_lora_releases_one_active",
        table_name="lora_releases",
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    with op.batch_alter_table("lora_releases") as batch:
        batch.add_column(sa.Column("parent_release_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_lora_releases_parent_release_id_lora_releases"),
            "lora_releases",
            ["parent_release_id"],
            ["id"],
        )
    op.create_index(
        "uq_lora_releases_one_active",
        "lora_releases",
        ["character_id", "base_checkpoint"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.create_index(
        "uq_lora_releases_one_active_baseline",
        "lora_releases",
        ["base_checkpoint"],
        unique=True,
        postgresql_where=ACTIVE_BASELINE,
        sqlite_where=ACTIVE_BASELINE,
    )


def downgrade() -> None:
    op.drop_index(
        "uq_lora_releases_one_active_baseline",
        table_name="lora_releases",
        postgresql_where=ACTIVE_BASELINE,
        sqlite_where=ACTIVE_BASELINE,
    )
    op.drop_index(
        "uq_lora_releases_one_active",
        table_name="lora_releases",
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    with op.batch_alter_table("lora_releases") as batch:
        batch.drop_constraint(
            op.f("fk_lora_releases_parent_release_id_lora_releases"), type_="foreignkey"
        )
        batch.drop_column("parent_release_id")
    # Two active releases of one character on different checkpoints cannot both stay active.
    op.execute(
        "UPDATE lora_releases SET status = 'approved' WHERE status = 'active' AND id NOT IN "
        "(SELECT MAX(id) FROM lora_releases WHERE status = 'active' GROUP BY character_id)"
    )
    op.create_index(
        "uq_lora_releases_one_active",
        "lora_releases",
        ["character_id"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("settings")
