"""The shop's rest (issue 13): a product's free trial days (seed FAQ 5)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0008_shop')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Product',
            name='trial_days',
            field=fields.SmallIntField(default=0, description='free days every new time rental of it starts with (FAQ 5)'),
        ),
    ]
