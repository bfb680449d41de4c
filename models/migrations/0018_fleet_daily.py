"""Per-group day rollups (fleet_daily) for the console's water chart (issue 17), filled here
from what the database holds, so the chart is not empty after the upgrade.

PostgreSQL: the ledger writer's statement adds to them from now on (models/usage.py); the
backfill sums usage_daily (kept for good) per day and present group of each device. SQLite: a
trigger on usage_record adds each new record; the backfill sums the raw ledger (usage_record:
what retention kept). A writer of an older version still running during a rolling upgrade adds
to usage_daily only: `aquafleet fleet rebuild-water` afterwards recomputes the days it wrote.
"""

from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

from aquafleet.models.fleet_history import rebuild_fleet_daily
from aquafleet.models.usage import SQLITE_FLEET_DAILY_TRIGGER


async def backfill(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        await client.execute_query(SQLITE_FLEET_DAILY_TRIGGER)
    await rebuild_fleet_daily(client)


async def drop_trigger(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        await client.execute_query("DROP TRIGGER IF EXISTS usage_record_fleet_daily")

class Migration(migrations.Migration):
    dependencies = [('models', '0017_ledger_partitions')]

    initial = False

    operations = [
        ops.CreateModel(
            name='FleetDaily',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('day', fields.DateField()),
                ('vendor_id', fields.CharField(max_length=4)),
                ('agent_id', fields.IntField(description="the devices' agent or dealer node, 0: none")),
                ('water_ml', fields.BigIntField(default=0)),
                ('dispenses', fields.IntField(default=0, description='dispense_done events (pours)')),
                ('records', fields.IntField(default=0)),
            ],
            options={'table': 'fleet_daily', 'app': 'models', 'unique_together': (('day', 'vendor_id', 'agent_id'),), 'pk_attr': 'id', 'table_description': "Water of one (vendor, agent node) per UTC day (of `received_at`): what the fleet's water"},
            bases=['Model'],
        ),
        ops.RunPython(backfill, drop_trigger),
    ]
