"""Tickets (with their serial counter), filter specs, billing plans and billing records."""

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from aquafleet.models.billing import BillingMode
from aquafleet.models.tickets import TicketState, TicketType
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0005_service_state')]

    initial = False

    operations = [
        ops.CreateModel(
            name='BillingPlan',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='billing_plans', on_delete=OnDelete.RESTRICT)),
                ('name', fields.CharField(max_length=64)),
                ('mode', fields.IntEnumField(description='POSTPAID: 1\nPREPAID: 2', enum_type=BillingMode, generated=False)),
                ('minimum_fen', fields.BigIntField(description='minimum charge per period, fen')),
                ('price_fen', fields.BigIntField(description='price of price_unit_ml of water, fen')),
                ('price_unit_ml', fields.BigIntField(description='the volume price_fen buys, ml')),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'billing_plan', 'app': 'models', 'pk_attr': 'id', 'table_description': "A vendor's price and minimum consumption per billing period."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='BillingRecord',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('did', fields.CharField(max_length=16)),
                ('vendor_code', fields.CharField(db_index=True, max_length=4)),
                ('plan_id', fields.IntField()),
                ('mode', fields.IntEnumField(description='POSTPAID: 1\nPREPAID: 2', enum_type=BillingMode, generated=False)),
                ('period_start', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False)),
                ('period_end', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('covered_from', fields.DatetimeField(description="later of period_start and the plan's since", auto_now=False, auto_now_add=False)),
                ('usage_ml', fields.BigIntField()),
                ('usage_fen', fields.BigIntField(description="usage_ml at the plan's price, rounded half up")),
                ('minimum_fen', fields.BigIntField(description="the plan's minimum, prorated to the coverage")),
                ('amount_due_fen', fields.BigIntField()),
                ('price_fen', fields.BigIntField()),
                ('price_unit_ml', fields.BigIntField()),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'billing_record', 'app': 'models', 'unique_together': (('did', 'period_start'),), 'pk_attr': 'id', 'table_description': 'What one device owes for one period, with the plan terms it was computed from.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DeviceBillingPlan',
            fields=[
                ('did', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16)),
                ('plan', fields.ForeignKeyField('models.BillingPlan', source_field='plan_id', db_constraint=True, to_field='id', related_name='devices', on_delete=OnDelete.RESTRICT)),
                ('since', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'device_billing_plan', 'app': 'models', 'pk_attr': 'did', 'table_description': 'The plan a device is billed on, since when.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='DeviceFilterSpec',
            fields=[
                ('did', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16)),
                ('stages', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'device_filter_spec', 'app': 'models', 'pk_attr': 'did', 'table_description': "A device's own filter stages, replacing its model's spec (e.g. a refitted unit)."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='FilterSpec',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='filter_specs', on_delete=OnDelete.RESTRICT)),
                ('model', fields.CharField(max_length=32)),
                ('stages', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'filter_spec', 'app': 'models', 'unique_together': (('vendor', 'model'),), 'pk_attr': 'id', 'table_description': 'The filter stages of one device model of a vendor (`model` as on the device).'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Ticket',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('ticket_id', fields.CharField(unique=True, max_length=24)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='tickets', on_delete=OnDelete.RESTRICT)),
                ('type', fields.IntEnumField(description='INSTALL: 1\nEXCHANGE: 2\nRETURN: 3\nFAULT: 4\nMAINTENANCE: 5\nDISMANTLE: 6', enum_type=TicketType, generated=False)),
                ('state', fields.IntEnumField(default=TicketState.CREATED, description='CREATED: 1\nAPPROVED: 2\nDISPATCHED: 3\nIN_PROGRESS: 4\nWAITING_REPLY: 5\nDONE: 6\nCANCELLED: 7', enum_type=TicketState, generated=False)),
                ('device', fields.ForeignKeyField('models.Device', source_field='device_id', null=True, db_constraint=True, to_field='did', related_name='tickets', on_delete=OnDelete.RESTRICT)),
                ('member_uid', fields.CharField(null=True, max_length=20)),
                ('detail', fields.CharField(default='', max_length=500)),
                ('dedup_key', fields.CharField(null=True, unique=True, max_length=128)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'ticket', 'app': 'models', 'indexes': [Index(fields=['vendor_id', 'state']), Index(fields=['device_id'])], 'pk_attr': 'id', 'table_description': "One work order. `member_uid` is the member's UID (no foreign key yet)."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='TicketSerial',
            fields=[
                ('vendor_code', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=4)),
                ('last_serial', fields.BigIntField()),
            ],
            options={'table': 'ticket_serial', 'app': 'models', 'pk_attr': 'vendor_code', 'table_description': 'The last ticket serial issued to a vendor (serials are never reused).'},
            bases=['Model'],
        ),
    ]
