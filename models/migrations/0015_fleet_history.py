"""The console's fleet history (issue 17): online devices sampled per (vendor, agent node), for the
24 h and 30 day charts of GET /fleet/statistics."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0014_shop_more')]

    initial = False

    operations = [
        ops.CreateModel(
            name='FleetOnlineSample',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('at', fields.DatetimeField(db_index=True, description="the sample's bucket start (UTC)", auto_now=False, auto_now_add=False)),
                ('vendor_id', fields.CharField(max_length=4)),
                ('agent_id', fields.IntField(description="the devices' agent or dealer node, 0: none")),
                ('online', fields.IntField()),
                ('devices', fields.IntField(description='registered, not deregistered')),
                ('hourly', fields.BooleanField(default=False, description='taken on the hour: kept 31 days')),
            ],
            options={'table': 'fleet_online_sample', 'app': 'models', 'unique_together': (('at', 'vendor_id', 'agent_id'),), 'pk_attr': 'id', 'table_description': "Devices of one (vendor, agent node) online at a sample time (the bucket's start)."},
            bases=['Model'],
        ),
    ]
