"""An index on pay_payment (state, updated_at): the payments sweep takes pending bills the
least recently tried first (models/payments.py `bills_to_close`, `late_bills`)."""

from tortoise import migrations
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

class Migration(migrations.Migration):
    dependencies = [('models', '0018_fleet_daily')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='Payment',
            index=Index(fields=['state', 'updated_at']),
        ),
    ]
