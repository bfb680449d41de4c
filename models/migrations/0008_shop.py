"""The shop (AC-01..07, AD-01..15): products, orders with their lines and moves, and the
vendors' product and order serials."""

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from aquafleet.models.orders import OrderKind, OrderState
from aquafleet.models.products import ProductState, ProductType
from json import dumps, loads
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0007_devices_api')]

    initial = False

    operations = [
        ops.CreateModel(
            name='Order',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('oid', fields.CharField(unique=True, max_length=24)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='orders', on_delete=OnDelete.RESTRICT)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_constraint=True, to_field='uid', related_name='orders', on_delete=OnDelete.RESTRICT)),
                ('agent', fields.ForeignKeyField('models.Agent', source_field='agent_id', null=True, db_constraint=True, to_field='id', related_name='orders', on_delete=OnDelete.RESTRICT)),
                ('referrer_uid', fields.CharField(null=True, max_length=20)),
                ('kind', fields.IntEnumField(description='PURCHASE: 1\nRENTAL: 2\nRENEWAL: 3', enum_type=OrderKind, generated=False)),
                ('state', fields.IntEnumField(default=OrderState.OBLIGATION, description='OBLIGATION: 0\nPAID: 1\nDELIVERED: 2\nRECEIVED: 3\nRETURN: 4\nCONSENT: 5\nREFUND: 6\nCLOSE: 7\nDONE: 8', enum_type=OrderState, generated=False)),
                ('receiver', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('memo', fields.CharField(default='', max_length=255)),
                ('goods_fen', fields.BigIntField(default=0)),
                ('freight_fen', fields.BigIntField(default=0)),
                ('install_fen', fields.BigIntField(default=0)),
                ('deposit_fen', fields.BigIntField(default=0)),
                ('rent_fen', fields.BigIntField(default=0)),
                ('total_fen', fields.BigIntField(default=0)),
                ('delivery', fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('idempotency_key', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('paid_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('delivered_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('received_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('return_reason', fields.CharField(default='', max_length=255)),
                ('refund_due_fen', fields.BigIntField(default=0)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('deleted_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'shop_order', 'app': 'models', 'unique_together': (('member', 'idempotency_key'),), 'indexes': [Index(fields=['vendor_id', 'state']), Index(fields=['member_id', 'created_at']), Index(fields=['agent_id']), Index(fields=['state', 'created_at'])], 'pk_attr': 'id', 'table_description': 'One order, amounts in fen, receiver and delivery as the seed nests them.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='OrderTransition',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order', fields.ForeignKeyField('models.Order', source_field='order_id', db_constraint=True, to_field='id', related_name='transitions', on_delete=OnDelete.RESTRICT)),
                ('event', fields.CharField(max_length=16)),
                ('from_state', fields.IntEnumField(description='OBLIGATION: 0\nPAID: 1\nDELIVERED: 2\nRECEIVED: 3\nRETURN: 4\nCONSENT: 5\nREFUND: 6\nCLOSE: 7\nDONE: 8', enum_type=OrderState, generated=False)),
                ('to_state', fields.IntEnumField(description='OBLIGATION: 0\nPAID: 1\nDELIVERED: 2\nRECEIVED: 3\nRETURN: 4\nCONSENT: 5\nREFUND: 6\nCLOSE: 7\nDONE: 8', enum_type=OrderState, generated=False)),
                ('actor_role', fields.CharField(max_length=16)),
                ('actor_id', fields.CharField(max_length=64)),
                ('reason', fields.CharField(default='', max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'order_transition', 'app': 'models', 'unique_together': (('order', 'event'),), 'pk_attr': 'id', 'table_description': 'One move of an order: from, event, to, who (role and id) and why.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Product',
            fields=[
                ('pid', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=20)),
                ('vendor', fields.ForeignKeyField('models.Vendor', source_field='vendor_id', db_constraint=True, to_field='code', related_name='products', on_delete=OnDelete.RESTRICT)),
                ('state', fields.IntEnumField(default=ProductState.DRAFT, description='DRAFT: 0\nPUBLISHED: 1\nRETIRED: 2', enum_type=ProductState, generated=False)),
                ('type', fields.IntEnumField(default=ProductType.BUY, description='BUY: 1\nRESERVE: 2', enum_type=ProductType, generated=False)),
                ('billing', fields.SmallIntField(description='计费方案 bits: 1 sale, 2 time, 4 volume, 8 vending')),
                ('name', fields.CharField(max_length=64)),
                ('desc', fields.CharField(default='', max_length=500)),
                ('tags', fields.CharField(default='', max_length=255)),
                ('sequence', fields.IntField(default=0)),
                ('bonus', fields.BooleanField(default=False)),
                ('price_fen', fields.BigIntField(default=0)),
                ('orig_price_fen', fields.BigIntField(default=0)),
                ('freight_fen', fields.BigIntField(default=0)),
                ('install', fields.BooleanField(default=False)),
                ('maintain', fields.BooleanField(default=False)),
                ('install_cost_fen', fields.BigIntField(default=0)),
                ('maintain_cost_fen', fields.BigIntField(default=0)),
                ('resource', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('notify_url', fields.CharField(default='', max_length=255)),
                ('deposit_fen', fields.BigIntField(default=0)),
                ('rent_packages', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('commis_enabled', fields.BooleanField(default=False)),
                ('commis_config', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('specification', fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
                ('retired_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'product', 'app': 'models', 'indexes': [Index(fields=['vendor_id', 'state', 'sequence'])], 'pk_attr': 'pid', 'table_description': 'One product of a vendor: the rent, commission and specification parts are JSON as the'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='OrderLine',
            fields=[
                ('id', fields.BigIntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('order', fields.ForeignKeyField('models.Order', source_field='order_id', db_constraint=True, to_field='id', related_name='lines', on_delete=OnDelete.RESTRICT)),
                ('product', fields.ForeignKeyField('models.Product', source_field='product_id', db_index=True, db_constraint=True, to_field='pid', related_name='order_lines', on_delete=OnDelete.RESTRICT)),
                ('position', fields.SmallIntField()),
                ('quantity', fields.SmallIntField()),
                ('package_key', fields.CharField(null=True, max_length=16)),
                ('price_fen', fields.BigIntField(description="per unit: the product price, or the package's")),
                ('amount_fen', fields.BigIntField(description='everything this line costs')),
                ('snapshot', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
            ],
            options={'table': 'order_line', 'app': 'models', 'unique_together': (('order', 'position'),), 'pk_attr': 'id', 'table_description': 'One line of an order: a product (kept for ever: products any order references are'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ShopSerial',
            fields=[
                ('name', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=32)),
                ('last_serial', fields.BigIntField()),
            ],
            options={'table': 'shop_serial', 'app': 'models', 'pk_attr': 'name', 'table_description': 'The last serial issued to a vendor for one kind of id (products, orders), never reused,'},
            bases=['Model'],
        ),
    ]
