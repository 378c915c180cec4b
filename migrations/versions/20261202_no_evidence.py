"""utterance results without evidence: null labels and scores, and the reason

Revision ID: 20261202_no_evidence
Revises: 20261202_faces
Create Date: 2026-12-02 00:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_no_evidence"
down_revision: str | None = "20261202_faces"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABEL_COLUMNS = (("emotion", sa.String(16)), ("sentiment", sa.String(16)))
SCORE_COLUMNS = ("emotion_scores", "sentiment_scores")


def upgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        for name, type_ in LABEL_COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=True)
        for name in SCORE_COLUMNS:
            batch.alter_column(name, existing_type=sa.JSON(), nullable=True)
        batch.add_column(sa.Column("reason", sa.String(32), nullable=True))


def downgrade() -> None:
    # Rows without evidence have no label to keep under the older, non-null schema.
    op.execute("DELETE FROM utterance_results WHERE emotion IS NULL OR sentiment IS NULL")
    with op.batch_alter_table("utterance_results") as batch:
        batch.drop_column("reason")
        for name in SCORE_COLUMNS:
            batch.alter_column(name, existing_type=sa.JSON(), nullable=False)
        for name, type_ in LABEL_COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=False)
