from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0009_money_ledger')]

    initial = False

    operations = [
        ops.CreateModel(
            name='PaymentMerchant',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='merchants', on_delete=OnDelete.RESTRICT)),
                ('channel', fields.CharField(max_length=16)),
                ('public', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('sealed', fields.TextField(default='', unique=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'pay_merchant', 'app': 'models', 'unique_together': (('vendor', 'channel'),), 'pk_attr': 'id', 'table_description': "A vendor's credentials at one payment channel: public parameters and sealed secrets."},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='Vendor',
            name='mch_secret',
            field=fields.CharField(default='', db_default='', max_length=512),
        ),
        ops.AlterField(
            model_name='Vendor',
            name='mp_secret',
            field=fields.CharField(default='', db_default='', max_length=512),
        ),
    ]
