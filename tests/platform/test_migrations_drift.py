"""The models and the migrations describe the same schema: a model changed without its
migration (a field, an index, even a table's description, which Tortoise takes from the
model's docstring) would reach a database only as a surprise at the next `makemigrations`."""

from __future__ import annotations

from pathlib import Path


async def test_the_models_and_the_migrations_agree(tmp_path: Path) -> None:
    from tortoise import Tortoise
    from tortoise.migrations.autodetector import MigrationAutodetector

    from aquafleet.models.db import tortoise_config

    config = tortoise_config(f"sqlite://{tmp_path / 'drift.sqlite3'}")
    await Tortoise.init(config=config)
    try:
        writers = await MigrationAutodetector(Tortoise.apps, config["apps"]).changes()
        missing = [op.describe() for writer in writers for op in writer.operations]
        assert missing == [], f"model changes without a migration: {missing}"
    finally:
        await Tortoise.close_connections()
