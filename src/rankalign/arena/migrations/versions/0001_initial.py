"""The first arena schema: items, prompts, responses, annotators, votes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("content", sa.Text, nullable=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "responses",
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), primary_key=True),
        sa.Column("item_id", sa.String(200), sa.ForeignKey("items.id"), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("quota", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id"), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=True),
        sa.Column("candidates", sa.JSON, nullable=False),
        sa.Column("ranks", sa.JSON, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("annotator_id", "request_id", name="uq_votes_annotator_request"),
    )
    op.create_index("ix_votes_annotator_id", "votes", ["annotator_id"])


def downgrade() -> None:
    op.drop_index("ix_votes_annotator_id", table_name="votes")
    for table in ("votes", "annotators", "responses", "prompts", "items"):
        op.drop_table(table)
