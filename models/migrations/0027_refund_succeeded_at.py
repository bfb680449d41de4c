"""A refund records when the channel says it succeeded (WeChat Pay's success_time), so
reconciliation counts it on the day the channel's bill lists it (models/reconcile.py,
docs/payments.md). Rows settled before keep null: they are counted by when they were settled
here (updated_at)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0026_service_change_request_args')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Refund',
            name='succeeded_at',
            field=fields.DatetimeField(null=True),
        ),
    ]
