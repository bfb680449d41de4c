from tortoise import migrations
from tortoise.migrations import operations as ops
from aquafleet.models.members import MemberState
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0003_accounts_agents')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Member',
            fields=[
                ('uid', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=20)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='members', on_delete=OnDelete.RESTRICT)),
                ('agent', fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_constraint=True, to_field='id', related_name='members', on_delete=OnDelete.RESTRICT)),
                ('referrer', fields.ForeignKeyField('models.Member', source_field='referrer_id', null=True, db_constraint=True, to_field='uid', related_name='referred', on_delete=OnDelete.RESTRICT)),
                ('state', fields.IntEnumField(default=MemberState.INACTIVE, description='DISABLED: 0\nINACTIVE: 1\nACTIVE: 2\nDEREGISTERED: 3', enum_type=MemberState, generated=False)),
                ('type', fields.SmallIntField(default=0)),
                ('name', fields.CharField(default='', max_length=64)),
                ('avatar', fields.CharField(default='', max_length=255)),
                ('mobile', fields.CharField(null=True, max_length=11)),
                ('email', fields.CharField(default='', max_length=128)),
                ('area', fields.CharField(default='', max_length=128)),
                ('address', fields.CharField(default='', max_length=255)),
                ('remark', fields.CharField(default='', max_length=255)),
                ('vip', fields.BooleanField(default=False)),
                ('bonus', fields.BigIntField(default=0)),
                ('password_hash', fields.CharField(null=True, max_length=255)),
                ('wx_openid', fields.CharField(null=True, max_length=64)),
                ('wx_unionid', fields.CharField(null=True, db_index=True, max_length=64)),
                ('wx_nick', fields.CharField(default='', max_length=64)),
                ('wx_avatar', fields.CharField(default='', max_length=255)),
                ('wx_sex', fields.SmallIntField(default=0)),
                ('wx_sbc_tms', fields.BigIntField(null=True)),
                ('reg_tms', fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('last_login_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('deregistered_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'member', 'app': 'models', 'unique_together': (('vendor', 'mobile'), ('vendor', 'wx_openid')), 'pk_attr': 'uid'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MemberCounter',
            fields=[
                ('vendor', fields.OneToOneField('models.Vendor', source_field='vendor_id', primary_key=True, db_index=True, db_constraint=True, to_field='code', related_name='member_counter', on_delete=OnDelete.RESTRICT)),
                ('next_serial', fields.BigIntField(default=1)),
            ],
            options={'table': 'member_counter', 'app': 'models', 'pk_attr': 'vendor_id', 'table_description': 'The next member serial of a vendor (serials are never reused).'},
            bases=['Model'],
        ),
    ]
