"""The raw ledger (usage_record) partitioned by month of received_at on PostgreSQL (issue 19).

PostgreSQL only: the plain table is renamed, a partitioned usage_record takes its name (same
columns, same id sequence), every month its rows span gets a partition (and this month and the
next), the rows move over in this migration's transaction and the old table is dropped. A
unique key of a partitioned table must hold its partition key: the primary key becomes (id,
received_at) and the ledger's dedupe key (did, boot, rec, received_at). SQLite keeps its plain
table and its (did, boot, rec) key: the model's state is unchanged, nothing happens there.
"""

import datetime as dt
from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

from aquafleet.models.usage_partitions import attach_sql, month_of, months_from, next_month

_COLUMNS = (
    "id, did, boot, rec, kind, event_kind, device_ts, received_at, delta_ml, flow_total_ml, "
    "cnt_epoch"
)


async def partition(apps: Any, schema_editor: Any) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "postgres":
        return
    run = client.execute_script
    await run("ALTER TABLE usage_record RENAME TO usage_record_unpartitioned")
    await run(
        "ALTER TABLE usage_record_unpartitioned RENAME CONSTRAINT usage_record_pkey "
        "TO usage_record_unpartitioned_pkey"
    )
    await run(
        "CREATE TABLE usage_record (LIKE usage_record_unpartitioned INCLUDING DEFAULTS) "
        "PARTITION BY RANGE (received_at)"
    )
    await run("ALTER TABLE usage_record ADD CONSTRAINT usage_record_pkey PRIMARY KEY (id, received_at)")
    await run(
        "ALTER TABLE usage_record ADD CONSTRAINT usage_record_dedupe "
        "UNIQUE (did, boot, rec, received_at)"
    )
    await run("ALTER SEQUENCE usage_record_id_seq OWNED BY usage_record.id")
    (span,) = await client.execute_query_dict(
        "SELECT MIN(received_at) AS first, MAX(received_at) AS last FROM usage_record_unpartitioned"
    )
    now = dt.datetime.now(dt.UTC)
    first = month_of(min(span["first"] or now, now))
    last = next_month(month_of(max(span["last"] or now, now)))
    for month in months_from(first, last):
        for sql in attach_sql(month):
            await run(sql)
    await run(
        f"INSERT INTO usage_record ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_record_unpartitioned"
    )
    await run("DROP TABLE usage_record_unpartitioned")


class Migration(migrations.Migration):
    dependencies = [('models', '0016_refund_part')]

    initial = False

    operations = [
        ops.RunPython(partition, ops.RunPython.noop),
    ]
