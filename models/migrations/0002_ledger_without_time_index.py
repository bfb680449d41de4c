from tortoise import migrations
from tortoise.migrations import operations as ops

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.RemoveIndex(
            model_name='UsageRecord',
            name=None,
            fields=['did', 'received_at'],
        ),
    ]
