from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from aquafleet.models.accounts import AccountState
from aquafleet.models.agents import AgentLevel, AgentState
from aquafleet.models.tenancy import Role
from aquafleet.models.vendors import VendorState
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0002_ledger_without_time_index')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Agent',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='agents', on_delete=OnDelete.RESTRICT)),
                ('parent', fields.ForeignKeyField('models.Agent', source_field='parent_id', null=True, db_constraint=True, to_field='id', related_name='children', on_delete=OnDelete.RESTRICT)),
                ('level', fields.IntEnumField(description='AGENT: 1\nDEALER: 2', enum_type=AgentLevel, generated=False)),
                ('path', fields.CharField(default='', db_index=True, max_length=64)),
                ('name', fields.CharField(max_length=128)),
                ('contact', fields.CharField(default='', max_length=64)),
                ('mobile', fields.CharField(default='', max_length=20)),
                ('email', fields.CharField(default='', max_length=128)),
                ('area', fields.CharField(default='', max_length=128)),
                ('address', fields.CharField(default='', max_length=255)),
                ('remark', fields.CharField(default='', max_length=255)),
                ('state', fields.IntEnumField(default=AgentState.ACTIVE, description='DISABLED: 0\nINACTIVE: 1\nACTIVE: 2', enum_type=AgentState, generated=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'agent', 'app': 'models', 'pk_attr': 'id', 'table_description': "One node of a vendor's agent tree."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='AdminAccount',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('username', fields.CharField(unique=True, max_length=64)),
                ('password_hash', fields.CharField(max_length=255)),
                ('role', fields.CharEnumField(description='PLATFORM: platform\nVENDOR: vendor\nAGENT: agent\nDEALER: dealer\nMEMBER: member', enum_type=Role, max_length=16)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', null=True, db_constraint=True, to_field='code', related_name='accounts', on_delete=OnDelete.RESTRICT)),
                ('agent', fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_constraint=True, to_field='id', related_name='accounts', on_delete=OnDelete.RESTRICT)),
                ('state', fields.IntEnumField(default=AccountState.ACTIVE, description='DISABLED: 0\nACTIVE: 2', enum_type=AccountState, generated=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('last_login_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'admin_account', 'app': 'models', 'pk_attr': 'id', 'table_description': 'A console login. Its role decides which of vendor/agent must be set.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='VendorContract',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='contracts', on_delete=OnDelete.RESTRICT)),
                ('contract_no', fields.CharField(max_length=64)),
                ('title', fields.CharField(default='', max_length=128)),
                ('signed_on', fields.DateField()),
                ('starts_on', fields.DateField()),
                ('ends_on', fields.DateField(null=True)),
                ('amount_fen', fields.BigIntField(default=0)),
                ('remark', fields.CharField(default='', max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'vendor_contract', 'app': 'models', 'unique_together': (('vendor', 'contract_no'),), 'pk_attr': 'id', 'table_description': 'A signing (contract) record of a vendor (AX-09..12).'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='Vendor',
            name='state',
            field=fields.IntEnumField(default=VendorState.ACTIVE, description='DISABLED: 0\nINACTIVE: 1\nACTIVE: 2\nDEREGISTERED: 3', enum_type=VendorState, generated=False),
        ),
        ops.AddField(
            model_name='Vendor',
            name='abbv',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='address',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Vendor',
            name='app_key',
            field=fields.CharField(null=True, unique=True, max_length=32),
        ),
        ops.AddField(
            model_name='Vendor',
            name='area',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Vendor',
            name='config',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
        ops.AddField(
            model_name='Vendor',
            name='contact',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='deregistered_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Vendor',
            name='domain',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Vendor',
            name='email',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Vendor',
            name='logo',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mch_appid',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mch_gid',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mch_secret',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mobile',
            field=fields.CharField(default='', db_default='', max_length=20),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mp_appid',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mp_gid',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Vendor',
            name='mp_secret',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Vendor',
            name='remark',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Vendor',
            name='reserved',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Vendor',
            name='type',
            field=fields.SmallIntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Vendor',
            name='updated_at',
            field=fields.DatetimeField(null=True, auto_now=True, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Vendor',
            name='wechat',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
    ]
