from tortoise import fields, migrations
from tortoise.migrations import operations as ops

from aquafleet.models.service import ServiceMode
from aquafleet.models.vending import DispenseState


class Migration(migrations.Migration):
    dependencies = [('models', '0004_members')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DeviceService',
            fields=[
                ('did', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16)),
                ('mode', fields.IntEnumField(description='SALE: 1\nTIME_RENTAL: 2\nVOLUME_RENTAL: 3\nVENDING: 4\nTEST: 8', enum_type=ServiceMode, generated=False)),
                ('remaining_ml', fields.BigIntField(null=True)),
                ('rental_expires_at', fields.BigIntField(null=True)),
                ('low_balance_ml', fields.BigIntField(null=True)),
                ('lock_bits', fields.IntField(default=0)),
                ('version', fields.BigIntField(default=0)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'device_service', 'app': 'models', 'pk_attr': 'did', 'table_description': 'The service state as of its last change (the live quota is in Redis).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ServiceChange',
            fields=[
                ('id', fields.BigIntField(primary_key=True, unique=True, db_index=True)),
                ('did', fields.CharField(db_index=True, max_length=16)),
                ('op', fields.CharField(max_length=32)),
                ('amount_ml', fields.BigIntField(null=True)),
                ('seconds', fields.BigIntField(null=True)),
                ('remaining_ml', fields.BigIntField(null=True)),
                ('rental_expires_at', fields.BigIntField(null=True)),
                ('lock_bits', fields.IntField(null=True)),
                ('version', fields.BigIntField(null=True)),
                ('actor', fields.CharField(max_length=64)),
                ('reason', fields.CharField(default='', max_length=255)),
                ('request_id', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'service_change', 'app': 'models', 'unique_together': (('did', 'request_id'),), 'pk_attr': 'id', 'table_description': "One change of a device's service state, or an event of it (quota lock, low balance)."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DispenseSession',
            fields=[
                ('id', fields.BigIntField(primary_key=True, unique=True, db_index=True)),
                ('did', fields.CharField(db_index=True, max_length=16)),
                ('vendor_code', fields.CharField(max_length=4)),
                ('payer_uid', fields.CharField(null=True, max_length=20)),
                ('requested_ml', fields.IntField()),
                ('price_fen_per_l', fields.IntField()),
                ('cid', fields.BigIntField()),
                ('state', fields.IntEnumField(default=DispenseState.PENDING, description='PENDING: 1\nDONE: 2\nFAILED: 3', enum_type=DispenseState, generated=False)),
                ('actual_ml', fields.IntField(null=True)),
                ('charge_fen', fields.BigIntField(null=True)),
                ('late_ml', fields.IntField(null=True)),
                ('failure', fields.CharField(default='', max_length=64)),
                ('deadline_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('closed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'dispense_session', 'app': 'models', 'unique_together': (('did', 'cid'),), 'pk_attr': 'id', 'table_description': 'A paid pour (vending): requested, actually poured, charged.'},
            bases=['Model'],
        ),
    ]
