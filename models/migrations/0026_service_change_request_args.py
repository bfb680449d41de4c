"""A service change records the arguments it was asked with, so a request id sent again with
another change (another op, amount, days, expiry, mode) is refused (409 idempotency_key_reused)
instead of being answered as a retry of the first (models/service.py, docs/api-devices.md).
Existing rows keep null: their op and what their row tells are compared."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0025_order_request_hash')]

    initial = False

    operations = [
        ops.AddField(
            model_name='ServiceChange',
            name='request_args',
            field=fields.JSONField(null=True),
        ),
    ]
