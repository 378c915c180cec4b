"""utterance results keep each used modality's own scores

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 12:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.add_column(sa.Column("modality_scores", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.drop_column("modality_scores")
