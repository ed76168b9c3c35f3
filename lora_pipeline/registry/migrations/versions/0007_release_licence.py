"""The licence a release was approved under (seed 004: a project can require one before any
release is approved); the model card shows it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("lora_releases") as batch:
        batch.add_column(sa.Column("licence", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lora_releases") as batch:
        batch.drop_column("licence")
