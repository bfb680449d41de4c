"""A service change under a request id is written pending (stage 1) before Redis runs it and
completed with the state right after it once Redis answered (stage 2 until Redis forgot the
record it keeps of it, then 0), so a change whose process died between Redis and the database
is applied once however late it is retried (models/service.py, docs/metering.md). Existing
rows are done (0)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from aquafleet.models.service import ChangeStage

class Migration(migrations.Migration):
    dependencies = [('models', '0028_exchange_order')]

    initial = False

    operations = [
        ops.AddField(
            model_name='ServiceChange',
            name='stage',
            field=fields.IntEnumField(default=ChangeStage.DONE, db_default=0, db_index=True, description='DONE: 0\nPENDING: 1\nUNSETTLED: 2', enum_type=ChangeStage, generated=False),
        ),
    ]
