from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0015_fleet_history')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Refund',
            name='part',
            field=fields.CharField(default='', description='the order part it gives back, empty: the whole', max_length=12),
        ),
    ]
