"""utterance corrections by their owner, and the account's training consent

Revision ID: 20261201_corrections
Revises: 0002
Create Date: 2026-12-01 20:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import shared.db.types

revision: str = "20261201_corrections"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("training_consent", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("utterance_results") as batch:
        batch.add_column(sa.Column("corrected_emotion", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("corrected_sentiment", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("corrected_by", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("corrected_at", shared.db.types.UTCDateTime(timezone=True), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_utterance_results_corrected_by_users"),
            "users",
            ["corrected_by"],
            ["id"],
            ondelete="SET NULL",
        )
        batch.create_index(batch.f("ix_utterance_results_corrected_at"), ["corrected_at"])


def downgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.drop_index(batch.f("ix_utterance_results_corrected_at"))
        batch.drop_constraint(batch.f("fk_utterance_results_corrected_by_users"), type_="foreignkey")
        batch.drop_column("corrected_at")
        batch.drop_column("corrected_by")
        batch.drop_column("corrected_sentiment")
        batch.drop_column("corrected_emotion")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("training_consent")
