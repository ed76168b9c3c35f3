"""Indexes for the sensors' queries, so a tick costs what arrived rather than the size of the
registry (issue 18 item 3): decisions by when they were made (the training sensor's cursor)
and per character, sources and generation jobs by state and id (the ingest, ComfyUI-output
and generation-request cursors), and releases by the dataset version they were trained on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, columns): each name follows the models' naming convention, ix_<table>_<columns>.
INDEXES = (
    ("images", ("reviewed_at",)),
    ("images", ("character_id", "reviewed_at")),
    ("sources", ("state", "id")),
    ("generation_jobs", ("status", "id")),
    ("lora_releases", ("dataset_version_id",)),
)


def _name(table: str, columns: Sequence[str]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    for table, columns in INDEXES:
        op.create_index(op.f(_name(table, columns)), table, list(columns), unique=False)


def downgrade() -> None:
    for table, columns in reversed(INDEXES):
        op.drop_index(op.f(_name(table, columns)), table_name=table)
