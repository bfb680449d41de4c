"""Field service (issue 15): technicians, ticket moves, the ticket columns of the lifecycle
(approval, dispatch, ratings, appointment, place), and the notification outbox."""

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from aquafleet.models.outbox import Channel, NotificationKind, NotificationState, RecipientType
from aquafleet.models.technicians import WorkState
from aquafleet.models.tenancy import Role
from aquafleet.models.tickets import TicketState
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0012_payments')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Notification',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('event_key', fields.CharField(max_length=128)),
                ('kind', fields.CharEnumField(description='ORDER_PAID: order_paid\nORDER_DELIVERED: order_delivered\nTICKET_DISPATCHED: ticket_dispatched\nTECHNICIAN_ON_WAY: technician_on_way\nTICKET_DONE: ticket_done\nRENTAL_REMINDER: rental_reminder\nRENTAL_EXPIRED: rental_expired\nBALANCE_LOW: balance_low\nBALANCE_EXHAUSTED: balance_exhausted\nFILTER_LOW: filter_low', enum_type=NotificationKind, max_length=32)),
                ('vendor_id', fields.CharField(max_length=4)),
                ('recipient_type', fields.CharEnumField(description='MEMBER: member\nTECHNICIAN: technician', enum_type=RecipientType, max_length=16)),
                ('recipient_id', fields.CharField(max_length=32)),
                ('channel', fields.CharEnumField(description='WECHAT: wechat\nSMS: sms', enum_type=Channel, max_length=16)),
                ('address', fields.CharField(max_length=64)),
                ('payload', fields.TextField(unique=False)),
                ('state', fields.IntEnumField(default=NotificationState.PENDING, description='PENDING: 0\nSENT: 1\nDEAD: 2', enum_type=NotificationState, generated=False)),
                ('attempts', fields.IntField(default=0)),
                ('next_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('claimed_by', fields.CharField(null=True, max_length=64)),
                ('claimed_until', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('sent_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('last_error', fields.CharField(default='', max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'notification', 'app': 'models', 'unique_together': (('event_key', 'recipient_type', 'recipient_id', 'channel'),), 'indexes': [Index(fields=['state', 'next_at'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='NotificationAttempt',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('notification', fields.ForeignKeyField('models.Notification', source_field='notification_id', db_constraint=True, to_field='id', related_name='attempt_rows', on_delete=OnDelete.RESTRICT)),
                ('number', fields.IntField()),
                ('node', fields.CharField(max_length=64)),
                ('ok', fields.BooleanField()),
                ('detail', fields.CharField(default='', max_length=255)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'notification_attempt', 'app': 'models', 'pk_attr': 'id', 'table_description': 'One delivery attempt: when, whether the provider took it, its answer or error.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='NotificationOptOut',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('member_uid', fields.CharField(max_length=20)),
                ('kind', fields.CharEnumField(description='ORDER_PAID: order_paid\nORDER_DELIVERED: order_delivered\nTICKET_DISPATCHED: ticket_dispatched\nTECHNICIAN_ON_WAY: technician_on_way\nTICKET_DONE: ticket_done\nRENTAL_REMINDER: rental_reminder\nRENTAL_EXPIRED: rental_expired\nBALANCE_LOW: balance_low\nBALANCE_EXHAUSTED: balance_exhausted\nFILTER_LOW: filter_low', enum_type=NotificationKind, max_length=32)),
            ],
            options={'table': 'notification_optout', 'app': 'models', 'unique_together': (('member_uid', 'kind'),), 'pk_attr': 'id', 'table_description': 'A kind a member turned off.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Technician',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='technicians', on_delete=OnDelete.RESTRICT)),
                ('agent', fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_constraint=True, to_field='id', related_name='technicians', on_delete=OnDelete.RESTRICT)),
                ('account', fields.OneToOneField('models.AdminAccount', source_field='account_id', db_constraint=True, to_field='id', related_name='technician', on_delete=OnDelete.RESTRICT)),
                ('name', fields.CharField(max_length=64)),
                ('mobile', fields.CharField(default='', max_length=20)),
                ('skills', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('work_state', fields.IntEnumField(default=WorkState.OFF, description='OFF: 0\nAVAILABLE: 1\nBUSY: 2', enum_type=WorkState, generated=False)),
                ('is_default', fields.BooleanField(default=False)),
                ('lat_e6', fields.IntField(null=True)),
                ('lng_e6', fields.IntField(null=True)),
                ('position_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'technician', 'app': 'models', 'indexes': [Index(fields=['vendor_id', 'agent_id'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='TicketMove',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('ticket', fields.ForeignKeyField('models.Ticket', source_field='ticket_id', db_constraint=True, to_field='id', related_name='moves', on_delete=OnDelete.RESTRICT)),
                ('event', fields.CharField(max_length=16)),
                ('from_state', fields.IntEnumField(description='CREATED: 1\nAPPROVED: 2\nDISPATCHED: 3\nIN_PROGRESS: 4\nWAITING_REPLY: 5\nDONE: 6\nCANCELLED: 7', enum_type=TicketState, generated=False)),
                ('to_state', fields.IntEnumField(description='CREATED: 1\nAPPROVED: 2\nDISPATCHED: 3\nIN_PROGRESS: 4\nWAITING_REPLY: 5\nDONE: 6\nCANCELLED: 7', enum_type=TicketState, generated=False)),
                ('actor_role', fields.CharField(max_length=16)),
                ('actor_id', fields.CharField(max_length=64)),
                ('note', fields.CharField(default='', max_length=255)),
                ('technician_id', fields.IntField(null=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'ticket_move', 'app': 'models', 'pk_attr': 'id', 'table_description': 'One move of a ticket: event, from, to, who (role and id), when, and a note.'},
            bases=['Model'],
        ),
        ops.AlterField(
            model_name='AdminAccount',
            name='role',
            field=fields.CharEnumField(description='PLATFORM: platform\nVENDOR: vendor\nAGENT: agent\nDEALER: dealer\nMEMBER: member\nTECHNICIAN: technician', enum_type=Role, max_length=16),
        ),
        ops.AlterModelOptions(
            name='DispenseSession',
            options={'table': 'dispense_session', 'app': 'models', 'unique_together': (('did', 'cid'),), 'pk_attr': 'id'},
        ),
        ops.AlterModelOptions(
            name='MemberCounter',
            options={'table': 'member_counter', 'app': 'models', 'pk_attr': 'vendor_id', 'table_description': 'The next member serial of a vendor (serials are never reused).'},
        ),
        ops.AddField(
            model_name='Ticket',
            name='address',
            field=fields.CharField(default='', db_default='', max_length=255),
        ),
        ops.AddField(
            model_name='Ticket',
            name='agent',
            field=fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_constraint=True, to_field='id', related_name='tickets', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Ticket',
            name='appoint_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='check_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='check_result',
            field=fields.BooleanField(null=True),
        ),
        ops.AddField(
            model_name='Ticket',
            name='check_usr',
            field=fields.CharField(null=True, max_length=64),
        ),
        ops.AddField(
            model_name='Ticket',
            name='dispatched_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='done_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='lat_e6',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Ticket',
            name='lng_e6',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Ticket',
            name='new_device_id',
            field=fields.CharField(null=True, max_length=16),
        ),
        ops.AddField(
            model_name='Ticket',
            name='order',
            field=fields.ForeignKeyField('models.Order', source_field='order_id', null=True, db_constraint=True, to_field='id', related_name='tickets', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddField(
            model_name='Ticket',
            name='priority',
            field=fields.SmallIntField(default=2, db_default=2),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rate_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rate_detail',
            field=fields.CharField(default='', db_default='', max_length=500),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rate_value',
            field=fields.SmallIntField(null=True),
        ),
        ops.AddField(
            model_name='Ticket',
            name='technician',
            field=fields.ForeignKeyField('models.Technician', source_field='technician_id', null=True, db_constraint=True, to_field='id', related_name='tickets', on_delete=OnDelete.RESTRICT),
        ),
        ops.AddIndex(
            model_name='Ticket',
            index=Index(fields=['technician_id', 'state']),
        ),
    ]
