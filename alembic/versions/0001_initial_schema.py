"""Initial schema of the task store.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backbones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("timm_name", sa.String(length=200), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("weights_uri", sa.Text(), nullable=True),
        sa.Column("weights_file_sha256", sa.String(length=64), nullable=True),
        sa.Column("weights_size", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backbones")),
        sa.UniqueConstraint("name", name=op.f("uq_backbones_name")),
    )
    op.create_table(
        "scenario_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scenario", sa.String(length=200), nullable=False),
        sa.Column("strategy", sa.String(length=200), nullable=False),
        sa.Column("protocol", sa.String(length=200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("accuracy_matrix", sa.JSON(), nullable=False),
        sa.Column("wall_time_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scenario_runs")),
    )
    op.create_index(op.f("ix_scenario_runs_scenario_strategy"), "scenario_runs", ["scenario", "strategy"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("backbone_id", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["backbone_id"], ["backbones.id"], name=op.f("fk_tasks_backbone_id_backbones")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("name", name=op.f("uq_tasks_name")),
    )
    op.create_index(op.f("ix_tasks_backbone_id"), "tasks", ["backbone_id"])
    op.create_table(
        "task_tags",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_tags_task_id_tasks")),
        sa.PrimaryKeyConstraint("task_id", "key", name=op.f("pk_task_tags")),
    )
    op.create_index(op.f("ix_task_tags_key_value"), "task_tags", ["key", "value"])
    op.create_table(
        "task_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("memory_size", sa.Integer(), nullable=False),
        sa.Column("hyperparams", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("data_fingerprint", sa.String(length=200), nullable=True),
        sa.Column("parent_version", sa.Integer(), nullable=True),
        sa.Column("artifact_uri", sa.Text(), nullable=True),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=True),
        sa.Column("artifact_size", sa.BigInteger(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status <> 'ready' OR (artifact_sha256 IS NOT NULL AND artifact_uri IS NOT NULL"
            " AND artifact_size IS NOT NULL AND finished_at IS NOT NULL)",
            name=op.f("ck_task_versions_ready_has_artifact"),
        ),
        sa.CheckConstraint("status IN ('training', 'ready', 'failed')", name=op.f("ck_task_versions_status")),
        sa.CheckConstraint("number >= 1", name=op.f("ck_task_versions_number_positive")),
        sa.ForeignKeyConstraint(
            ["task_id", "parent_version"],
            ["task_versions.task_id", "task_versions.number"],
            name=op.f("fk_task_versions_task_id_parent_version_task_versions"),
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_versions_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_versions")),
        sa.UniqueConstraint("task_id", "number", name=op.f("uq_task_versions_task_id_number")),
    )
    op.create_index(op.f("ix_task_versions_status"), "task_versions", ["status"])
    op.create_table(
        "alias_moves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('set', 'rollback', 'remove')", name=op.f("ck_alias_moves_kind")),
        sa.ForeignKeyConstraint(
            ["task_id", "from_version"],
            ["task_versions.task_id", "task_versions.number"],
            name=op.f("fk_alias_moves_task_id_from_version_task_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id", "to_version"],
            ["task_versions.task_id", "task_versions.number"],
            name=op.f("fk_alias_moves_task_id_to_version_task_versions"),
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_alias_moves_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_moves")),
    )
    op.create_index(op.f("ix_alias_moves_task_id_alias"), "alias_moves", ["task_id", "alias"])
    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_number", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id", "version_number"],
            ["task_versions.task_id", "task_versions.number"],
            name=op.f("fk_aliases_task_id_version_number_task_versions"),
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_aliases_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aliases")),
        sa.UniqueConstraint("task_id", "name", name=op.f("uq_aliases_task_id_name")),
    )
    op.create_index(op.f("ix_aliases_name"), "aliases", ["name"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("data_source", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["task_versions.id"], name=op.f("fk_evaluations_version_id_task_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_version_id"), "evaluations", ["version_id"])
    op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["task_versions.id"], name=op.f("fk_version_tags_version_id_task_versions")
        ),
        sa.PrimaryKeyConstraint("version_id", "key", name=op.f("pk_version_tags")),
    )
    op.create_index(op.f("ix_version_tags_key_value"), "version_tags", ["key", "value"])


def downgrade() -> None:
    # Dropping a table drops its indexes; drop in reverse order of the foreign keys.
    op.drop_table("version_tags")
    op.drop_table("evaluations")
    op.drop_table("aliases")
    op.drop_table("alias_moves")
    op.drop_table("task_versions")
    op.drop_table("task_tags")
    op.drop_table("tasks")
    op.drop_table("scenario_runs")
    op.drop_table("backbones")
