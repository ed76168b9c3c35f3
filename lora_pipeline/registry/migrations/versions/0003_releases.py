"""Releases: one active release per character and checkpoint, one active baseline release per
checkpoint, the release a retrain continued from, and per-project settings (eval prompts,
gate thresholds, licence fields).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = sa.text("status = 'active'")
ACTIVE_PROJECT = sa.text("status = 'active' AND scope = 'project'")
ACTIVE_BASELINE = sa.text("status = 'active' AND scope = 'baseline'")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")


def _checkpoint_key(checkpoint: str) -> str:
    # Frozen copy of registry.commands.checkpoint_key as of this revision: releases are
    # matched by the checkpoint's file or folder name, without a weights suffix.
    name = PurePosixPath(checkpoint.replace("\\", "/").rstrip("/")).name
    for suffix in WEIGHT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# `alembic upgrade --sql` (a DBA applying the script by hand, PostgreSQL): the same in SQL.
OFFLINE_KEY_CHECKPOINTS = (
    "UPDATE lora_releases SET base_checkpoint = regexp_replace(regexp_replace("
    "rtrim(replace(base_checkpoint, chr(92), '/'), '/'), '^.*/', ''), "
    "'\\.(safetensors|ckpt|pt|bin)$', '', 'i')"
)
OFFLINE_DEMOTE_DUPLICATES = (
    "UPDATE lora_releases SET status = 'approved' WHERE id IN (SELECT id FROM (SELECT id, "
    "row_number() OVER (PARTITION BY scope, base_checkpoint, CASE WHEN scope = 'project' "
    "THEN character_id END ORDER BY id DESC) AS n FROM lora_releases WHERE status = 'active') "
    "AS ranked WHERE n > 1)"
)


def _key_checkpoints_and_demote_duplicates() -> None:
    """Store every release's checkpoint by its key, then keep one active release per new
    slot (the newest): two paths of one checkpoint were two slots before."""
    if context.is_offline_mode():
        op.execute(OFFLINE_KEY_CHECKPOINTS)
        op.execute(OFFLINE_DEMOTE_DUPLICATES)
        return
    releases = sa.table(
        "lora_releases",
        sa.column("id", sa.Integer),
        sa.column("character_id", sa.Integer),
        sa.column("base_checkpoint", sa.Text),
        sa.column("status", sa.String),
        sa.column("scope", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(
            releases.c.id,
            releases.c.character_id,
            releases.c.base_checkpoint,
            releases.c.status,
            releases.c.scope,
        ).order_by(releases.c.id.desc())
    ).all()
    taken: set[tuple] = set()
    for row in rows:
        key = _checkpoint_key(row.base_checkpoint or "")
        values: dict[str, str] = {"base_checkpoint": key} if key != row.base_checkpoint else {}
        if row.status == "active":
            slot = (row.scope, key, row.character_id if row.scope == "project" else None)
            if slot in taken:
                values["status"] = "approved"
            taken.add(slot)
        if values:
            connection.execute(releases.update().where(releases.c.id == row.id).values(**values))


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
    _key_checkpoints_and_demote_duplicates()
    op.create_index(
        "uq_lora_releases_one_active",
        "lora_releases",
        ["character_id", "base_checkpoint"],
        unique=True,
        postgresql_where=ACTIVE_PROJECT,
        sqlite_where=ACTIVE_PROJECT,
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
        postgresql_where=ACTIVE_PROJECT,
        sqlite_where=ACTIVE_PROJECT,
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
