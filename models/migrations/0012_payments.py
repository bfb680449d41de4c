from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from aquafleet.models.payments import PaymentState
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0011_ledger_scale')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Payment',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('bill_no', fields.CharField(unique=True, max_length=32)),
                ('purpose', fields.CharField(max_length=8)),
                ('order_oid', fields.CharField(null=True, db_index=True, max_length=24)),
                ('member_uid', fields.CharField(max_length=20)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('channel', fields.CharField(max_length=16)),
                ('amount_fen', fields.BigIntField()),
                ('state', fields.IntEnumField(default=PaymentState.PENDING, description='PENDING: 1\nPAID: 2\nCLOSED: 3', enum_type=PaymentState, generated=False)),
                ('prepay_id', fields.CharField(default='', max_length=64)),
                ('transaction_no', fields.CharField(default='', max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('paid_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('closed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'pay_payment', 'app': 'models', 'indexes': [Index(fields=['state', 'created_at'])], 'pk_attr': 'id', 'table_description': 'One bill at a payment channel.'},
            bases=['Model'],
        ),
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
        ops.CreateModel(
            name='PaymentNotice',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('notice_id', fields.CharField(unique=True, max_length=64)),
                ('bill_no', fields.CharField(db_index=True, max_length=32)),
                ('channel', fields.CharField(max_length=16)),
                ('outcome', fields.CharField(max_length=24)),
                ('amount_fen', fields.BigIntField()),
                ('transaction_no', fields.CharField(default='', max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'pay_notice', 'app': 'models', 'pk_attr': 'id', 'table_description': "What a channel told us about a bill (a notification, or a query's answer), once per id,"},
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
