"""SQLite: the per-group day rollups (fleet_daily) are no longer added by a trigger on
usage_record, row by row, but by the ledger writer, one statement per batch after its insert,
in the same transaction (models/usage.py `sqlite_insert_usage`; issue 20: the trigger was more
than half of SQLite's cost per record). Same sums: only rows really inserted count, a device
missing from `device` adds nothing, the day is date(received_at). PostgreSQL: nothing (its
writer never had a trigger). Backwards, the trigger is created again (for the code before).

Stop the ledger writer for the upgrade: one of the previous version running after this step
adds nothing to the rollups (`aquafleet fleet rebuild-water --since <first missed day>` puts
them right); the new writer beside a database still holding the trigger would add twice.
"""

from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

from aquafleet.models.usage import SQLITE_FLEET_DAILY_TRIGGER


async def drop_trigger(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        await client.execute_query("DROP TRIGGER IF EXISTS usage_record_fleet_daily")


async def create_trigger(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        await client.execute_query(SQLITE_FLEET_DAILY_TRIGGER)


class Migration(migrations.Migration):
    dependencies = [('models', '0020_withdrawal_transfer')]

    initial = False

    operations = [
        ops.RunPython(drop_trigger, create_trigger),
    ]
