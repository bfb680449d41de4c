"""The SQLite connection every process opens (models/db.py): WAL with its checkpoint, and a page
cache large enough for the ledger writer's working set (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aquafleet.models.db import (
    SQLITE_CACHE_KIB,
    SQLITE_CHECKPOINT_PAGES,
    SQLITE_WAL_KEEP_BYTES,
    connection,
    database,
)
from tests.conftest import MigratedTemplates, copy_migrated_sqlite


@pytest.mark.parametrize("pragma, expected", [
    ("journal_mode", "wal"),
    ("synchronous", 1),  # NORMAL
    ("wal_autocheckpoint", SQLITE_CHECKPOINT_PAGES),
    ("journal_size_limit", SQLITE_WAL_KEEP_BYTES),
    ("cache_size", -SQLITE_CACHE_KIB),  # negative: KiB, not pages
])  # fmt: skip
async def test_the_sqlite_connection_runs_with_the_ledger_s_settings(
    tmp_path: Path,
    migrated_templates: MigratedTemplates,
    pragma: str,
    expected: object,
) -> None:
    url = copy_migrated_sqlite(migrated_templates, tmp_path / "aquafleet.sqlite3")
    async with database(url, run_migrations=False):
        rows = await connection().execute_query_dict(f"PRAGMA {pragma}")
    assert list(rows[0].values()) == [expected]
