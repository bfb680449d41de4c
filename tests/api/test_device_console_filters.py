"""What the console's device list and device page ask beyond the seed: the list filters
low_balance and filter_due, and a device's latest ledger records (GET /devices/{did}/records),
each in the caller's scope."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from aquafleet.models.filters import set_model_filter_spec
from aquafleet.models.service import is_low_balance
from aquafleet.models.usage import (
    DeviceSnapshot,
    RecordKind,
    UsageRow,
    store_ledger_batch,
)
from aquafleet.protocol import EventKind
from tests.api.conftest import ApiClient, Tenant
from tests.api.test_devices_api import register

DAY = 86_400


def test_low_balance_rule():
    def low(**given: Any) -> bool:
        values: dict[str, Any] = {
            "remaining_ml": None, "low_balance_ml": None, "rental_expires_at": None,
            "now_s": 1_000_000, "threshold_ml": None, "within_s": 3 * DAY,
        }  # fmt: skip
        return is_low_balance(**(values | given))

    assert low() is False  # a sale device: no balance to run low
    assert low(remaining_ml=0) is True  # nothing left, no threshold set
    assert low(remaining_ml=1) is False
    assert low(remaining_ml=500, low_balance_ml=500) is True  # the device's own threshold
    assert low(remaining_ml=501, low_balance_ml=500) is False
    assert low(remaining_ml=900, low_balance_ml=500, threshold_ml=1000) is True  # the query's
    assert low(remaining_ml=100, low_balance_ml=500, threshold_ml=50) is False
    assert low(rental_expires_at=1_000_000 + 3 * DAY) is True
    assert low(rental_expires_at=1_000_000 + 3 * DAY + 1) is False
    assert low(rental_expires_at=999_000) is True  # expired
    assert low(rental_expires_at=1_000_000 + 2 * DAY, within_s=DAY) is False


async def dids_of(client: ApiClient, **params: Any) -> list[str]:
    answer = await client.call("GET", "/devices", params={k: str(v) for k, v in params.items()})
    assert answer.body["total"] == len(answer.data)
    return [d["did"] for d in answer.data]


async def test_the_list_filters_low_balance_and_filter_due(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    quota_low, quota_ok, rental_soon, rental_later, sale = [
        d["did"] for d in await register(api, a.vid, 5, model="RO-9")
    ]
    (theirs,) = [d["did"] for d in await register(api, b.vid, 1, model="RO-9")]
    svc = "/devices/{}/svc"
    await a.vendor.call("PUT", svc.format(quota_low), {
        "op": "configure", "mode": 3, "remaining_ml": 400, "low_balance_ml": 500,
    })  # fmt: skip
    await a.vendor.call("PUT", svc.format(quota_ok), {
        "op": "configure", "mode": 3, "remaining_ml": 20_000, "low_balance_ml": 500,
    })  # fmt: skip
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
    for did, until in ((rental_soon, soon), (rental_later, later)):
        await a.vendor.call("PUT", svc.format(did), {
            "op": "configure", "mode": 2, "rental_expires_at": until.isoformat(),
        })  # fmt: skip
    await b.vendor.call("PUT", svc.format(theirs), {
        "op": "configure", "mode": 3, "remaining_ml": 0, "low_balance_ml": 500,
    })  # fmt: skip
    await a.vendor.call("PUT", f"/devices/{quota_low}", {"agent_id": a.dealer_id})

    assert await dids_of(a.vendor, low_balance="true") == sorted([quota_low, rental_soon])
    assert await dids_of(a.vendor, low_balance="false") == sorted([quota_ok, rental_later, sale])
    assert await dids_of(a.vendor, low_balance="true", low_balance_days=30) == sorted(
        [quota_low, rental_soon, rental_later]
    )
    assert await dids_of(a.vendor, low_balance="true", low_balance_ml=0, low_balance_days=0) == []
    assert await dids_of(a.dealer, low_balance="true") == [quota_low]
    assert await dids_of(api, low_balance="true", vid=b.vid) == [theirs]
    page = await a.vendor.call("GET", "/devices", params={"low_balance": "true", "limit": "1"})
    assert page.body["total"] == 2 and len(page.data) == 1

    # Filters: stage 1 of RO-9 lives 1000 power-on hours.
    await set_model_filter_spec(a.vid, "RO-9", [
        {"order": 1, "name": "PP", "timer_mode": 1, "lifetime": 1000, "worklife": 0},
    ])  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    for did, power_on_h in ((quota_low, 950), (quota_ok, 400), (sale, 1200)):
        await DeviceSnapshot.create(
            did=did, boot=1, rec=1, device_ts=int(time.time()), received_at=now,
            filters=[[1, 0, power_on_h, 0]],
        )  # fmt: skip
    assert await dids_of(a.vendor, filter_due="true") == sorted([quota_low, sale])
    assert await dids_of(a.vendor, filter_due="true", filter_due_pct=70) == sorted(
        [quota_low, quota_ok, sale]
    )
    assert await dids_of(a.vendor, filter_due="false") == sorted(
        [quota_ok, rental_soon, rental_later]
    )  # no spec report: not due
    assert await dids_of(a.vendor, filter_due="true", low_balance="true") == [quota_low]
    assert await dids_of(a.dealer, filter_due="true") == [quota_low]
    assert await dids_of(b.vendor, filter_due="true") == []
    bad = await a.vendor.call("GET", "/devices", params={"filter_due_pct": "101"}, expect=422)
    assert bad.code == "validation_failed"


async def test_the_ledgers_latest_records(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, b = tenants
    (did,) = [d["did"] for d in await register(api, a.vid, 1)]
    now = dt.datetime.now(dt.UTC)
    rows = [
        UsageRow(did, 1, rec, int(RecordKind.TELEMETRY), 0, 1_700_000_000 + rec, now, 10 * rec,
                 100 * rec, 1)
        for rec in range(1, 31)
    ]  # fmt: skip
    rows.append(
        UsageRow(did, 2, 1, int(RecordKind.EVENT), int(EventKind.DISPENSE_DONE), 1_700_000_100,
                 now, 0, None, None)
    )  # fmt: skip
    await store_ledger_batch(rows, [], [])
    first = await a.vendor.call("GET", f"/devices/{did}/records", params={"limit": "5"})
    assert first.body["total"] == 31
    assert [(r["boot"], r["rec"]) for r in first.data] == [(2, 1), (1, 30), (1, 29), (1, 28),
                                                           (1, 27)]  # fmt: skip
    event, newest = first.data[0], first.data[1]
    assert event["kind"] == "event" and event["event_kind"] == int(EventKind.DISPENSE_DONE)
    assert newest == {
        "boot": 1, "rec": 30, "kind": "telemetry", "event_kind": None,
        "device_tms": "2023-11-14T22:13:50Z", "received_tms": newest["received_tms"],
        "delta_ml": 300, "flow_total_ml": 3000, "cnt_epoch": 1,
    }  # fmt: skip
    later = await a.vendor.call("GET", f"/devices/{did}/records", params={"offset": "30"})
    assert [(r["boot"], r["rec"]) for r in later.data] == [(1, 1)]
    await a.vendor.call("GET", f"/devices/{did}/records", params={"limit": "101"}, expect=422)
    await b.vendor.call("GET", f"/devices/{did}/records", expect=404)
    await a.dealer.call("GET", f"/devices/{did}/records", expect=404)  # not at its node
