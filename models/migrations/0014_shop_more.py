"""The shop's rest (issue 13): the devices each order names (AD-01's `device` filter) and a
product's free trial days (seed FAQ 5)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0013_field_service')]

    initial = False

    operations = [
        ops.CreateModel(
            name='OrderDevice',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order', fields.ForeignKeyField('models.Order', source_field='order_id', db_constraint=True, to_field='id', related_name='devices', on_delete=OnDelete.RESTRICT)),
                ('did', fields.CharField(db_index=True, max_length=16)),
            ],
            options={'table': 'order_device', 'app': 'models', 'unique_together': (('order', 'did'),), 'pk_attr': 'id', 'table_description': "A device an order names (delivered with it, or renewed by it): AD-01's `device` filter."},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Product',
            name='trial_days',
            field=fields.SmallIntField(default=0, description='free days every new time rental of it starts with (FAQ 5)'),
        ),
    ]
