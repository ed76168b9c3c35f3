"""A release approved although its gate was unverified (nothing measured whether it draws the
character) records who overrode the gate, why, when, and for which eval.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("gate_override_eval_id", "gate_override_at", "gate_override_by", "gate_override_reason")


def upgrade() -> None:
    with op.batch_alter_table("lora_releases") as batch:
        batch.add_column(sa.Column("gate_override_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("gate_override_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("gate_override_at", sa.DateTime(), nullable=True))
        # Not a foreign key: the override names the eval it was made on, and a re-evaluation
        # (a newer eval) needs a new decision.
        batch.add_column(sa.Column("gate_override_eval_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lora_releases") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
