"""A heartbeat on training versions, so a version whose process died can be found and failed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE on both backends (SQLite >= 3.35 drops columns): a batch "move and copy" of
# task_versions would trip the foreign keys that aliases, evaluations and tags hold on it.
def upgrade() -> None:
    op.add_column("task_versions", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("task_versions", "heartbeat_at")
