"""utterance results say why a modality was not used (e.g. audio without speech)

Revision ID: 20261201_modalities_masked
Revises: 20261201_named_analyses
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261201_modalities_masked"
down_revision: str | None = "20261201_named_analyses"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.add_column(sa.Column("modalities_masked", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("utterance_results") as batch:
        batch.drop_column("modalities_masked")
