"""A member's Idempotency-Key for a 退租 ask (POST /orders/{oid}/rental/end): the ticket the
request opened or answered, with the request's digest, so the key sent again answers that
ticket and, with another request, 409 idempotency_key_reused (models/rental_end.py,
docs/api-tickets.md). Session 17's number; it follows 0030 on this branch (a merge after
another 0031 points it there)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0031_ticket_node_backfill')]

    initial = False

    operations = [
        ops.CreateModel(
            name='TicketRequestKey',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('member_uid', fields.CharField(max_length=20)),
                ('idempotency_key', fields.CharField(max_length=64)),
                ('request_hash', fields.CharField(max_length=64)),
                ('ticket', fields.ForeignKeyField('models.Ticket', source_field='ticket_id', db_constraint=True, to_field='id', related_name='request_keys', on_delete=OnDelete.RESTRICT)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'ticket_request_key', 'app': 'models', 'unique_together': (('member_uid', 'idempotency_key'),), 'pk_attr': 'id', 'table_description': "A member's Idempotency-Key for a request that opened or answered a ticket (a 退租 ask),"},
            bases=['Model'],
        ),
    ]

