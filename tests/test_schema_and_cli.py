"""The migrations match the models on both backends (the newcomer's `scrm run`: tests/test_run.py)."""

from __future__ import annotations


from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel


def test_alembic_head_matches_the_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
