"""What every WeChat Pay transfer create of a withdrawal is built from (its merchant, app and
payee openid), fixed when the withdrawal is requested, so that two creates of one batch never
differ; when its latest create was sent, and an operator's stop (gateway/payouts.py,
docs/commissions.md). Existing rows keep nulls: their values are fixed at their next send
(an older node of a rolling upgrade writes such rows too)."""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0019_payment_tried_index')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_mchid',
            field=fields.CharField(null=True, description='weixin: the merchant that sends the batch', max_length=32),
        ),
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_appid',
            field=fields.CharField(null=True, description='weixin: the app the openid belongs to', max_length=32),
        ),
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_openid',
            field=fields.CharField(null=True, description='weixin: the payee, as bound when requested', max_length=64),
        ),
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_sent_at',
            field=fields.DatetimeField(null=True, description='weixin: when the latest create of its batch was sent'),
        ),
        ops.AddField(
            model_name='Withdrawal',
            name='transfer_stopped_at',
            field=fields.DatetimeField(null=True, description='weixin: an operator stopped sending it (failing it)'),
        ),
    ]
