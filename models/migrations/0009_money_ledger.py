from tortoise import migrations
from tortoise.migrations import operations as ops
from aquafleet.models.money import RefundState
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0008_shop')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MoneyAccount',
            fields=[
                ('name', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=96)),
            ],
            options={'table': 'money_account', 'app': 'models', 'pk_attr': 'name', 'table_description': 'A row per guarded account, locked while a posting checks its balance, so that two'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MoneyTransaction',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('key', fields.CharField(unique=True, max_length=128)),
                ('kind', fields.CharField(max_length=32)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('order_oid', fields.CharField(null=True, db_index=True, max_length=24)),
                ('actor', fields.CharField(default='', max_length=64)),
                ('memo', fields.CharField(default='', max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'money_txn', 'app': 'models', 'pk_attr': 'id', 'table_description': 'One movement of money, whose entries sum to zero (`key` makes posting idempotent).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MoneyEntry',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('txn', fields.ForeignKeyField('models.MoneyTransaction', source_field='txn_id', db_constraint=True, to_field='id', related_name='entries', on_delete=OnDelete.RESTRICT)),
                ('account', fields.CharField(max_length=96)),
                ('amount_fen', fields.BigIntField()),
                ('order_oid', fields.CharField(null=True, max_length=24)),
            ],
            options={'table': 'money_entry', 'app': 'models', 'indexes': [Index(fields=['account']), Index(fields=['order_oid'])], 'pk_attr': 'id', 'table_description': 'One side of a transaction: + debit, - credit, in fen.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Refund',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('refund_no', fields.CharField(unique=True, max_length=64)),
                ('order_oid', fields.CharField(db_index=True, max_length=24)),
                ('vendor_code', fields.CharField(max_length=8)),
                ('amount_fen', fields.BigIntField()),
                ('reason', fields.CharField(default='', max_length=255)),
                ('state', fields.IntEnumField(default=RefundState.DUE, description='DUE: 1\nREQUESTED: 2\nSUCCEEDED: 3\nFAILED: 4', enum_type=RefundState, generated=False)),
                ('requested_by', fields.CharField(default='', max_length=64)),
                ('channel', fields.CharField(default='', max_length=16)),
                ('channel_refund_id', fields.CharField(default='', max_length=64)),
                ('failure', fields.CharField(default='', max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'money_refund', 'app': 'models', 'indexes': [Index(fields=['state', 'created_at'])], 'pk_attr': 'id', 'table_description': "A refund of (part of) an order's money, identified by its refund number."},
            bases=['Model'],
        ),
        ops.AlterModelOptions(
            name='DispenseSession',
            options={'table': 'dispense_session', 'app': 'models', 'unique_together': (('did', 'cid'),), 'pk_attr': 'id'},
        ),
        ops.AlterModelOptions(
            name='MemberCounter',
            options={'table': 'member_counter', 'app': 'models', 'pk_attr': 'vendor_id', 'table_description': 'The next member serial of a vendor (serials are never reused).'},
        ),
    ]
