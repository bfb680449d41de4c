"""Per-device per-day ledger rollups (usage_daily), filled from the ledger on PostgreSQL."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from typing import Any

# PostgreSQL serves device statistics from the rollups: add up what the ledger already holds.
_BACKFILL = (
    "INSERT INTO usage_daily (did, day, water_ml, dispenses, records, first_at, last_at) "
    "SELECT did, (received_at AT TIME ZONE 'UTC')::date, SUM(delta_ml), "
    "COUNT(*) FILTER (WHERE kind = 33 AND event_kind = 1), COUNT(*), MIN(received_at), "
    "MAX(received_at) FROM usage_record GROUP BY 1, 2"
)


async def backfill(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect == "postgres":
        await client.execute_script(_BACKFILL)


class Migration(migrations.Migration):
    dependencies = [('models', '0008_shop')]

    initial = False

    operations = [
        ops.CreateModel(
            name='UsageDaily',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('did', fields.CharField(max_length=16)),
                ('day', fields.DateField()),
                ('water_ml', fields.BigIntField(default=0)),
                ('dispenses', fields.IntField(default=0, description='dispense_done events (pours)')),
                ('records', fields.IntField(default=0)),
                ('first_at', fields.DatetimeField(description='first record received that day', auto_now=False, auto_now_add=False)),
                ('last_at', fields.DatetimeField(description='last record received that day', auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'usage_daily', 'app': 'models', 'unique_together': (('did', 'day'),), 'pk_attr': 'id', 'table_description': "One device's ledger per UTC day (of `received_at`): what device statistics read, kept"},
            bases=['Model'],
        ),
        ops.RunPython(backfill, ops.RunPython.noop),
    ]
