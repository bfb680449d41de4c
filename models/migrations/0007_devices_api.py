"""Devices API (AB-01..16): vendor configuration, user profile, owner, agent node and
deregistration time on the device; the device_share table."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0006_tickets_filters_billing')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DeviceShare',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('device', fields.ForeignKeyField('models.Device', source_field='device_id', db_constraint=True, to_field='did', related_name='shares', on_delete=OnDelete.RESTRICT)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_index=True, db_constraint=True, to_field='uid', related_name='device_shares', on_delete=OnDelete.RESTRICT)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'device_share', 'app': 'models', 'unique_together': (('device', 'member'),), 'pk_attr': 'id', 'table_description': "A member the device's owner shares it with: they may use it, not unbind or share it."},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Device',
            name='agent',
            field=fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_index=True, db_constraint=True, to_field='id', related_name='devices', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Device',
            name='bound_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Device',
            name='brand',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Device',
            name='deregistered_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Device',
            name='dev_idcd',
            field=fields.CharField(default='', db_default='', max_length=32),
        ),
        ops.AddField(
            model_name='Device',
            name='hw_version',
            field=fields.CharField(default='', db_default='', max_length=32),
        ),
        ops.AddField(
            model_name='Device',
            name='installed_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Device',
            name='installer_id',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Device',
            name='lbs_lat_e6',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Device',
            name='lbs_lng_e6',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Device',
            name='manufactured_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Device',
            name='net_entry',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Device',
            name='net_type',
            field=fields.CharField(default='', db_default='', max_length=16),
        ),
        ops.AddField(
            model_name='Device',
            name='owner',
            field=fields.ForeignKeyField('models.Member', source_field='owner_id', null=True, db_index=True, db_constraint=True, to_field='uid', related_name='owned_devices', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Device',
            name='platform',
            field=fields.CharField(default='', db_default='', max_length=32),
        ),
        ops.AddField(
            model_name='Device',
            name='product_id',
            field=fields.CharField(default='', db_default='', max_length=20),
        ),
        ops.AddField(
            model_name='Device',
            name='profile_location',
            field=fields.CharField(default='', db_default='', max_length=128),
        ),
        ops.AddField(
            model_name='Device',
            name='profile_name',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Device',
            name='profile_remark',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Device',
            name='project',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Device',
            name='qc_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Device',
            name='qc_id',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Device',
            name='sim_iccid',
            field=fields.CharField(default='', db_default='', max_length=22),
        ),
        ops.AddField(
            model_name='Device',
            name='sw_version',
            field=fields.CharField(default='', db_default='', max_length=32),
        ),
        # AddField does not create the index a field's db_index asks for: the owner and agent
        # filters of the device list (and every member's own devices) need them.
        ops.RunSQL(
            [
                'CREATE INDEX IF NOT EXISTS "idx_device_owner_id" ON "device" ("owner_id")',
                'CREATE INDEX IF NOT EXISTS "idx_device_agent_id" ON "device" ("agent_id")',
            ],
            reverse_sql=[
                'DROP INDEX IF EXISTS "idx_device_owner_id"',
                'DROP INDEX IF EXISTS "idx_device_agent_id"',
            ],
        ),
    ]
