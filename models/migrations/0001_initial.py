import functools
from json import dumps, loads

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.indexes import Index
from tortoise.migrations import operations as ops

from aquafleet.models.devices import DeviceState, DeviceType
from aquafleet.models.usage import RecordKind
from aquafleet.models.vendors import VendorState


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="DeviceSnapshot",
            fields=[
                (
                    "did",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16),
                ),
                ("boot", fields.BigIntField()),
                ("rec", fields.BigIntField()),
                ("device_ts", fields.BigIntField()),
                ("received_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("flow_total_ml", fields.BigIntField(null=True)),
                ("tds_in_ppm", fields.IntField(null=True)),
                ("tds_out_ppm", fields.IntField(null=True)),
                ("temperature_dc", fields.IntField(null=True)),
                (
                    "filters",
                    fields.JSONField(
                        null=True,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                ("fault_bits", fields.BigIntField(null=True)),
                ("signal", fields.IntField(null=True)),
                ("state_bits", fields.BigIntField(null=True)),
            ],
            options={
                "table": "device_snapshot",
                "app": "models",
                "pk_attr": "did",
                "table_description": "The newest telemetry of a device (by boot, rec), kept by the ledger writer.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="UsageRecord",
            fields=[
                (
                    "id",
                    fields.BigIntField(
                        generated=True, primary_key=True, unique=True, db_index=True
                    ),
                ),
                ("did", fields.CharField(max_length=16)),
                ("boot", fields.BigIntField()),
                ("rec", fields.BigIntField()),
                (
                    "kind",
                    fields.IntEnumField(
                        description="TELEMETRY: 32\nEVENT: 33",
                        enum_type=RecordKind,
                        generated=False,
                    ),
                ),
                ("event_kind", fields.SmallIntField(default=0)),
                ("device_ts", fields.BigIntField(description="device clock, unix seconds")),
                ("received_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("delta_ml", fields.BigIntField()),
                ("flow_total_ml", fields.BigIntField(null=True)),
                ("cnt_epoch", fields.BigIntField(null=True)),
            ],
            options={
                "table": "usage_record",
                "app": "models",
                "unique_together": (("did", "boot", "rec"),),
                "indexes": [Index(fields=["did", "received_at"])],
                "pk_attr": "id",
                "table_description": "One metered record: `delta_ml` is the water it added to the device's total.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Vendor",
            fields=[
                (
                    "code",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=4),
                ),
                ("name", fields.CharField(max_length=128)),
                (
                    "state",
                    fields.IntEnumField(
                        default=VendorState.ACTIVE,
                        description="DISABLED: 0\nINACTIVE: 1\nACTIVE: 2",
                        enum_type=VendorState,
                        generated=False,
                    ),
                ),
                ("next_device_serial", fields.BigIntField(default=1)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "vendor",
                "app": "models",
                "pk_attr": "code",
                "table_description": "A brand. `code` is the 4-character prefix of its device, member and order ids.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Device",
            fields=[
                (
                    "did",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=16),
                ),
                (
                    "vendor",
                    fields.ForeignKeyField(
                        "models.Vendor",
                        source_field="vendor_id",
                        db_constraint=True,
                        to_field="code",
                        related_name="devices",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "type",
                    fields.IntEnumField(
                        default=DeviceType.UNKNOWN,
                        description="UNKNOWN: 0\nSALE: 1\nTIME_RENTAL: 2\nVOLUME_RENTAL: 3\nVENDING: 4\nTEST: 8",
                        enum_type=DeviceType,
                        generated=False,
                    ),
                ),
                ("model", fields.CharField(default="", max_length=32)),
                ("key_version", fields.IntField(default=1)),
                (
                    "state",
                    fields.IntEnumField(
                        default=DeviceState.INACTIVE,
                        description="DISABLED: 0\nINACTIVE: 1\nACTIVE: 2\nDEREGISTERED: 3",
                        enum_type=DeviceState,
                        generated=False,
                    ),
                ),
                ("fw_version", fields.CharField(default="", max_length=32)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "updated_at",
                    fields.DatetimeField(db_index=True, auto_now=True, auto_now_add=False),
                ),
                (
                    "activated_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={"table": "device", "app": "models", "pk_attr": "did"},
            bases=["Model"],
        ),
    ]
