"""The recovery pass and the upgrade's one-off step on a Redis Cluster (SQLite only: the
cluster is under test here): the index is read across the shards' slots and the markers are
scanned on every master."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.metering.test_service_unrecorded import (  # noqa: F401
    test_a_change_of_the_old_release_without_a_row_is_not_granted_again_after_its_week,
    test_a_record_of_the_release_before_is_indexed_and_recorded_at_the_upgrade,
    test_a_top_up_whose_row_rolled_back_with_its_caller_is_recorded_by_the_recovery_pass,
)


@pytest.fixture
def database_url(tmp_path: Path, migrated_templates: Any) -> Iterator[str]:
    path = tmp_path / "aquafleet.sqlite3"
    shutil.copyfile(migrated_templates.sqlite(), path)
    yield f"sqlite://{path}"
