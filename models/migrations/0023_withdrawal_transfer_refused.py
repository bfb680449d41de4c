"""When WeChat Pay first refused a create of a withdrawal's transfer batch 403 NO_AUTH (the
merchant may not transfer): that refusal depends on the moment, not on the request, so an
identical create sent when the permission was there may still be being accepted. The sweep
sends the batch again for STOP_GRACE after it, then fails the withdrawal only once no create
of it can still be being accepted and WeChat Pay has no batch under its number
(gateway/payouts.py, docs/commissions.md). Existing rows keep null."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0022_withdrawal_transfer_fixed')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_refused_at',
            field=fields.DatetimeField(null=True, description='weixin: WeChat Pay first refused a create of it NO_AUTH'),
        ),
    ]
