"""When the payments sweep next asks the channel about a pending bill, and how many times it
has (models/payments.py `late_bills`, `bill_queried`): an abandoned payment sheet is asked
about less and less often (1, 2, 5, 10, 30 minutes, then hourly) instead of every pass for the
day it stays payable. Stored on the bill, so a restart or another node keeps the schedule."""

from tortoise import fields, migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

class Migration(migrations.Migration):
    dependencies = [('models', '0032_ticket_request_key')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Payment',
            name='queries',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Payment',
            name='next_query_at',
            field=fields.DatetimeField(null=True),
        ),
        ops.AddIndex(
            model_name='Payment',
            index=Index(fields=['state', 'next_query_at']),
        ),
    ]
