"""An exchange ticket records the hand-over its completion began (the replacement device and
when), before the live store moves the quota: a retry or a cancel later than the store's
markers live is refused instead of moving the quota twice, and operators list the exchanges
stuck after their hand-over (models/ticket_work.py, docs/api-tickets.md). Existing rows keep
null."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0023_withdrawal_transfer_refused')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Ticket',
            name='handed_over_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='handed_over_to',
            field=fields.CharField(null=True, max_length=16),
        ),
    ]
