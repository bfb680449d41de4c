"""The numbers an order's bill left open at a provider (models/bill_numbers.py): an Alipay
URL never opened, a bill paid elsewhere while it could not be closed at its channel, and the
numbers `aquafleet payments old-numbers` records for bills moved before moves closed them. The
payments sweep closes each there and applies a payment found under it once."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from aquafleet.models.bill_numbers import NumberState
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0029_service_change_stage')]

    initial = False

    operations = [
        ops.CreateModel(
            name='OldBillNumber',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('payment_id', fields.BigIntField(db_index=True)),
                ('bill_no', fields.CharField(max_length=32)),
                ('channel', fields.CharField(max_length=16)),
                ('prepay_id', fields.CharField(default='', max_length=64)),
                ('state', fields.IntEnumField(default=NumberState.OPEN, description='OPEN: 1\nDONE: 2', enum_type=NumberState, generated=False)),
                ('payable_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('guessed', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('done_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'pay_old_number', 'app': 'models', 'unique_together': (('bill_no', 'channel'),), 'indexes': [Index(fields=['state', 'updated_at'])], 'pk_attr': 'id', 'table_description': "A number an order's bill had at a provider channel, perhaps still open there."},
            bases=['Model'],
        ),
    ]

