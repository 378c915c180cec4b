"""utterance results keep the faces found in their sampled frames

Revision ID: 20261202_faces
Revises: 20261201_modalities_masked
Create Date: 2026-12-02 00:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_faces"
down_revision: str | None = "20261201_modalities_masked"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.add_column(sa.Column("faces", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.drop_column("faces")
