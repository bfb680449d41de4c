from tortoise import migrations
from tortoise.migrations import operations as ops
from aquafleet.models.commissions import CommissionState, WithdrawalState
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0009_money_ledger')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Commission',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order_oid', fields.CharField(max_length=24)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('level', fields.SmallIntField()),
                ('earner', fields.CharField(max_length=40)),
                ('earner_path', fields.CharField(null=True, description="an agent earner's", max_length=64)),
                ('buyer_uid', fields.CharField(max_length=20)),
                ('base_fen', fields.BigIntField()),
                ('amount_fen', fields.BigIntField()),
                ('reversed_fen', fields.BigIntField(default=0)),
                ('state', fields.IntEnumField(default=CommissionState.PENDING, description='PENDING: 1\nAVAILABLE: 2\nREVERSED: 3', enum_type=CommissionState, generated=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('activated_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'commission', 'app': 'models', 'unique_together': (('order_oid', 'level'),), 'indexes': [Index(fields=['earner', 'created_at']), Index(fields=['vendor_code', 'created_at']), Index(fields=['earner_path'])], 'pk_attr': 'id', 'table_description': 'What one level earns from one order.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='CommissionSplit',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order_oid', fields.CharField(unique=True, max_length=24)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('base_fen', fields.BigIntField(description='the commissionable amount: goods and rent')),
                ('total_fen', fields.BigIntField(description='the levels together, at computation')),
                ('computed_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'commission_split', 'app': 'models', 'pk_attr': 'id', 'table_description': 'One per paid order whose split was computed (even when it pays nobody): its presence'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Withdrawal',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('earner', fields.CharField(max_length=40)),
                ('earner_path', fields.CharField(null=True, max_length=64)),
                ('request_id', fields.CharField(max_length=64)),
                ('amount_fen', fields.BigIntField()),
                ('state', fields.IntEnumField(default=WithdrawalState.REQUESTED, description='REQUESTED: 1\nPAID: 2\nFAILED: 3', enum_type=WithdrawalState, generated=False)),
                ('channel', fields.CharField(max_length=16)),
                ('channel_ref', fields.CharField(default='', max_length=64)),
                ('reason', fields.CharField(default='', max_length=255)),
                ('requested_by', fields.CharField(default='', max_length=64)),
                ('settled_by', fields.CharField(default='', max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'commission_withdrawal', 'app': 'models', 'unique_together': (('earner', 'request_id'),), 'indexes': [Index(fields=['earner', 'created_at']), Index(fields=['vendor_code', 'state'])], 'pk_attr': 'id', 'table_description': "An earner's withdrawal of available commission (AE-03)."},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Product',
            name='commis_renewal',
            field=fields.BooleanField(default=True),
        ),
    ]
