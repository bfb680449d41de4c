"""When a send fixed the WeChat transfer payee of a withdrawal stored without one (a row from
before 0020, or an older node's): until STOP_GRACE after it (and after the request), a create
an older node built from the binding of its moment may still be being accepted, so a refusal
of the fixed payee's create does not fail the withdrawal (gateway/payouts.py,
docs/commissions.md). Existing rows keep null."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0021_fleet_daily_without_trigger')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_fixed_at',
            field=fields.DatetimeField(null=True, description='weixin: a send fixed the payee of a row stored without one'),
        ),
    ]
