"""Products API (AC-01..07) through a real node on SQLite and PostgreSQL: every field of the
seed's example, the rules across fields, roles and tenants, visitors, the specification, and
delete-or-retire."""

from __future__ import annotations

from typing import Any

from aquafleet.models.members import Member
from aquafleet.models.order_placing import LineRequest, OrderRequest, create_order
from aquafleet.models.products import Product, ProductState, is_valid_product_id
from tests.api.conftest import ApiClient, Tenant
from tests.api.shop import SEED_PRODUCT, add_product, make_member, seed_product


async def test_a_product_keeps_every_field_of_the_seeds_example(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    pid = await add_product(a.vendor)
    assert is_valid_product_id(pid) and pid.startswith(a.vid) and int(pid[4:16]) == 1
    read = (await a.vendor.call("GET", f"/products/{pid}")).data
    expected = {k: v for k, v in SEED_PRODUCT.items() if k != "prod_id"}
    # A package answers both units; the one it does not buy is null.
    packages = [{**p, "ml": None} for p in SEED_PRODUCT["rent"]["config"]]
    expected["rent"] = {**SEED_PRODUCT["rent"], "config": packages, "trial_days": 0}
    # Renewals earn commission unless the product says otherwise (docs/commissions.md).
    expected["commis"] = {**SEED_PRODUCT["commis"], "renewal": True}
    assert {k: read[k] for k in expected} == expected
    assert (read["prod_id"], read["vid"]) == (pid, a.vid)
    assert read["create_tms"].endswith("Z") and read["update_tms"].endswith("Z")
    # The next product continues the vendor's serials; the platform adds by naming the vendor.
    second = await add_product(api, vid=a.vid, name="第二")
    assert int(second[4:16]) == 2
    refused = await api.call("POST", "/products", seed_product(), expect=422)
    assert refused.data == [{"field": "vid", "message": "the platform names the vendor"}]


async def test_a_product_that_does_not_hold_together_is_refused(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    days_package = {"name": "30天", "key": "30d", "value": 6000, "days": 30}
    ml_package = {"name": "100L", "key": "100l", "value": 2000, "ml": 100_000}
    schema = [  # broken types and bounds: validation_failed
        {"price": 29.8},
        {"price": -1},
        {"price": True},
        {"price": "2980"},
        {"billing": 0},
        {"billing": 16},
        {"prod_id": "AAAA000000000001XXXX"},
        {"commis": {"enabled": True, "config": [21, 9, 0, 1]}},
        {"commis": {"enabled": True, "config": [101]}},
        {"commis": {"enabled": True, "config": [True]}},
        {"rent": {"deposit": 0, "config": [{**days_package, "value": 1.5}]}},
        {"name": ""},
        {"name": "a\u202eb"},
        {"surprise": 1},
    ]
    rules = [  # well-formed but inconsistent: invalid_input
        {"commis": {"enabled": True, "config": [60, 41]}},
        {"billing": 1, "rent": {"deposit": 0, "config": [days_package]}},
        {"billing": 2, "rent": {"deposit": 0, "config": [ml_package]}},
        {"billing": 2, "rent": {"deposit": 0, "config": []}},
        {"billing": 4, "rent": {"deposit": 0, "config": [days_package]}},
        {"billing": 2, "rent": {"deposit": 0, "config": [{**days_package, "ml": 5}]}},
        {"billing": 2, "rent": {"deposit": 0, "config": [{**days_package}, {**days_package}]}},
        {"billing": 1, "rent": {"deposit": 100, "config": []}},
        {"install": False, "install_cost": 100},
        {"specification": {"filters": [SEED_PRODUCT["specification"]["filters"][0]] * 2}},
    ]
    for changes, code in [(c, "validation_failed") for c in schema] + [
        (c, "invalid_input") for c in rules
    ]:
        answer = await a.vendor.call("POST", "/products", seed_product(**changes), expect=422)
        assert answer.code == code, (changes, answer)
    assert await Product.filter(vendor_id=a.vid).count() == 0
    # A volume rental whose packages buy ml is fine, and a product needs no filters.
    pid = await add_product(
        a.vendor, billing=4, rent={"deposit": 100, "config": [ml_package]}, specification={}
    )
    spec = (await a.vendor.call("GET", f"/products/{pid}/prof")).data
    assert spec == {"mode": 0, "filters": [], "flowmeter": {"measure_mode": 0, "config": []}}


async def test_roles_and_tenants(api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]):
    a, b = tenants
    published = await add_product(a.vendor)
    draft = await add_product(a.vendor, state=0, name="草稿")
    member_a = await make_member(api_node, api, a.vid)
    member_b = await make_member(api_node, api, b.vid)
    for client in (a.agent, a.dealer, member_a.client):  # A#: platform and vendor only
        answer = await client.call("POST", "/products", seed_product(), expect=403)
        assert answer.code == "forbidden"
        await client.call("PUT", f"/products/{published}", {"price": 1}, expect=403)
        await client.call("DELETE", f"/products/{published}?confirm={published}", expect=403)
    # Agents and dealers see their vendor's catalogue, drafts too; members the published.
    for client in (a.vendor, a.agent, a.dealer):
        listed = await client.call("GET", "/products")
        assert {p["prod_id"] for p in listed.data} == {published, draft}
    listed = await member_a.client.call("GET", "/products")
    assert [p["prod_id"] for p in listed.data] == [published] and listed.body["total"] == 1
    await member_a.client.call("GET", f"/products/{draft}", expect=404)
    # Another vendor's product answers 404, as an unknown id does, for every verb.
    for client in (b.vendor, b.agent, member_b.client):
        answer = await client.call("GET", f"/products/{published}", expect=404)
        assert answer.code == "not_found"
        await client.call("GET", f"/products/{published}/prof", expect=404)
        assert (await client.call("GET", "/products")).data == []
    await b.vendor.call("PUT", f"/products/{published}", {"price": 1}, expect=404)
    await b.vendor.call("PUT", f"/products/{published}/prof", {"mode": 1}, expect=404)
    await b.vendor.call("DELETE", f"/products/{published}?confirm={published}", expect=404)
    await b.vendor.call("POST", "/products", seed_product(vid=a.vid), expect=404)
    assert (await Product.get(pid=published)).price_fen == SEED_PRODUCT["price"]
    # The platform sees both vendors and filters.
    await add_product(b.vendor, billing=1, rent={"deposit": 0, "config": []})
    everything = await api.call("GET", "/products")
    assert everything.body["total"] == 3
    rentals = await api.call("GET", "/products", params={"billing": 2})
    assert {p["prod_id"] for p in rentals.data} == {published, draft}
    only_a = await api.call("GET", "/products", params={"vid": a.vid, "state": 0})
    assert [p["prod_id"] for p in only_a.data] == [draft]


async def test_visitors_browse_only_when_the_vendor_allows_it(
    api: ApiClient, tenants: tuple[Tenant, Tenant]
):
    a, b = tenants
    published = await add_product(a.vendor)
    draft = await add_product(a.vendor, state=0)
    visitor = api.as_(None)
    for path in ("/products", f"/products/{published}", f"/products/{published}/prof"):
        answer = await visitor.call("GET", path, params={"vid": a.vid}, expect=401)
        assert answer.code == "unauthorized"
    await api.call("PUT", f"/vendors/{a.vid}/cfg", {"shop_public": True})
    assert (await api.call("GET", f"/vendors/{a.vid}")).data["cfg"]["shop_public"] is True
    listed = await visitor.call("GET", "/products", params={"vid": a.vid})
    assert [p["prod_id"] for p in listed.data] == [published]
    read = await visitor.call("GET", f"/products/{published}", params={"vid": a.vid})
    assert read.data["price"] == SEED_PRODUCT["price"]
    spec = await visitor.call("GET", f"/products/{published}/prof", params={"vid": a.vid})
    assert spec.data == SEED_PRODUCT["specification"]
    await visitor.call("GET", f"/products/{draft}", params={"vid": a.vid}, expect=404)
    await visitor.call("GET", "/products", expect=401)  # no vendor named
    await visitor.call("GET", "/products", params={"vid": b.vid}, expect=401)  # B is closed
    await visitor.call("GET", f"/products/{published}", params={"vid": b.vid}, expect=401)
    # Wrong credentials are not taken for a visitor.
    await api.as_("nonsense").call("GET", "/products", params={"vid": a.vid}, expect=401)


async def test_changes_and_the_specification(api: ApiClient, tenants: tuple[Tenant, Tenant]):
    a, _ = tenants
    pid = await add_product(a.vendor)
    await a.vendor.call("PUT", f"/products/{pid}", {"price": 199900, "name": "新名字"}, expect=201)
    read = (await a.vendor.call("GET", f"/products/{pid}")).data
    assert (read["price"], read["name"], read["freight"]) == (199900, "新名字", 1000)
    # A change must leave the product whole: dropping the time-rental packages is refused.
    refused = await a.vendor.call(
        "PUT", f"/products/{pid}", {"rent": {"deposit": 0, "config": []}}, expect=422
    )
    assert refused.code == "invalid_input"
    spec = {
        "mode": 1,
        "filters": [{"order": 1, "name": "PP", "timer_mode": 2, "lifetime": 0, "worklife": 600}],
        "flowmeter": {
            "measure_mode": 1,
            "config": [{"name": "常温", "key": "normal", "value": 25}],
        },
    }
    changed = await a.vendor.call("PUT", f"/products/{pid}/prof", spec, expect=201)
    assert changed.data == spec
    assert (await api.call("GET", f"/products/{pid}/prof")).data == spec
    assert (await a.vendor.call("GET", f"/products/{pid}")).data["specification"] == spec
    bad = {**spec, "filters": [spec["filters"][0], spec["filters"][0]]}
    await a.vendor.call("PUT", f"/products/{pid}/prof", bad, expect=422)


async def test_delete_needs_confirmation_and_an_ordered_product_is_retired(
    api: ApiClient, api_node: Any, tenants: tuple[Tenant, Tenant]
):
    a, _ = tenants
    loose = await add_product(a.vendor)
    ordered = await add_product(a.vendor)
    for query in ("", "?confirm=yes", f"?confirm={ordered}"):
        answer = await a.vendor.call("DELETE", f"/products/{loose}{query}", expect=422)
        assert answer.code == "validation_failed"
    await a.vendor.call("DELETE", f"/products/{loose}?confirm={loose}", expect=204)
    await a.vendor.call("GET", f"/products/{loose}", expect=404)
    assert not await Product.exists(pid=loose)

    shopper = await make_member(api_node, api, a.vid)
    member = await Member.get(uid=shopper.uid)
    await create_order(member, OrderRequest([LineRequest(ordered)], {"name": "张三"}))
    await api.call("DELETE", f"/products/{ordered}?confirm={ordered}", expect=204)
    product = await Product.get(pid=ordered)
    assert product.state is ProductState.RETIRED and product.retired_at is not None
    assert (await a.vendor.call("GET", f"/products/{ordered}")).data["state"] == 2
    await shopper.client.call("GET", f"/products/{ordered}", expect=404)
    assert (await shopper.client.call("GET", "/products")).data == []
