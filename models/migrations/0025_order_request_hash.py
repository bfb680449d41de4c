"""An order records a digest of the request that made it, so an Idempotency-Key sent again with
another request is refused (409 idempotency_key_reused) instead of answering the first order
(models/orders.py, docs/api-shop.md). Existing rows keep null: their key answers as before."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0024_ticket_hand_over')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Order',
            name='request_hash',
            field=fields.CharField(null=True, max_length=64),
        ),
    ]
