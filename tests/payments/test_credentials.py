"""Merchant credentials (AX-02, AX-07): stored encrypted under a key derived from the master
secret, never answered by any endpoint and never written to a log line, each one proven."""

from __future__ import annotations

import io

import pytest

from aquafleet.models.merchants import PaymentMerchant, open_vendor_secret, wechat_merchant
from aquafleet.models.sealed import SecretBox, SecretUnreadable, is_sealed
from aquafleet.models.vendors import Vendor
from tests.api.conftest import PASSWORD, ApiClient, md5
from tests.conftest import MASTER_SECRET
from tests.payments.keys import public_pem, rsa_private_pem

MP_SECRET = "mp-secret-7f3a9c"
MCH_SECRET = "mch-secret-51be02"
API_V3_KEY = "k" * 8 + "APIv3key" + "0123456789abcdef"  # 32 characters
PRIVATE_KEY = rsa_private_pem("merchant")
PLATFORM_PUBLIC = public_pem(rsa_private_pem("platform"))
# Each credential as it must never be seen again: the PEM's base64 body is what would leak.
SECRETS = {
    "mp_secret": MP_SECRET,
    "mch_secret": MCH_SECRET,
    "mch_apiv3_key": API_V3_KEY,
    "mch_private_key": PRIVATE_KEY.splitlines()[5],
}


async def _everything_answered(api: ApiClient, vid: str) -> str:
    parts = []
    for path in (f"/vendors/{vid}", "/vendors", "/openapi.json"):
        async with api.session.get(
            f"{api.base}/api/v1{path}", headers={"Authorization": f"Bearer {api.token}"}
        ) as response:
            parts.append(await response.text())
    return "\n".join(parts)


async def test_each_credential_is_sealed_and_never_answered_or_logged(
    log_stream: io.StringIO, api: ApiClient
):
    created = await api.call(
        "POST",
        "/vendors",
        {
            "vid": "PAYS", "user": "pays-admin", "pwd": md5(PASSWORD), "name": "Pays",
            "mp_appid": "wxmp0001", "mp_secret": MP_SECRET,
        },
    )  # fmt: skip
    assert created.status == 201
    answer = await api.call(
        "PUT",
        "/vendors/PAYS/mxx",
        {
            "mch_gid": "1900000109", "mch_appid": "wxd678efh567hg6787", "mch_secret": MCH_SECRET,
            "mch_apiv3_key": API_V3_KEY, "mch_private_key": PRIVATE_KEY,
            "mch_cert_serial": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
            "wxpay_serial": "PUB_KEY_ID_0114232134912410000000000000",
            "wxpay_public_key": PLATFORM_PUBLIC,
        },
    )  # fmt: skip
    assert answer.status == 201 and answer.data == {"vid": "PAYS"}
    # A malformed key is refused without repeating it.
    bad = await api.call("PUT", "/vendors/PAYS/mxx", {"mch_apiv3_key": "short-key"}, expect=422)
    assert "short-key" not in str(bad.body)
    bad = await api.call(
        "PUT", "/vendors/PAYS/mxx", {"mch_private_key": "-----BEGIN nope"}, expect=422
    )
    assert "BEGIN nope" not in str(bad.body)

    read = (await api.call("GET", "/vendors/PAYS")).data
    assert read["mp_secret_set"] and read["mch_secret_set"]
    assert read["mch_apiv3_key_set"] and read["mch_private_key_set"]
    assert read["wxpay_public_key_set"] and read["mch_cert_serial"].startswith("5157F09E")
    answered = await _everything_answered(api, "PAYS")
    logged = log_stream.getvalue()
    # The stream holds the node's lines, the AX-07 change among them (its field names only).
    assert "admin_login" in logged and "vendor_wechat_changed" in logged
    for name, secret in SECRETS.items():
        assert secret not in answered, f"{name} answered"
        assert secret not in logged, f"{name} logged"

    # At rest: sealed, and only the master secret's key opens them.
    vendor = await Vendor.get(code="PAYS")
    assert is_sealed(vendor.mp_secret) and is_sealed(vendor.mch_secret)
    merchant_row = await PaymentMerchant.get(vendor_id="PAYS", channel="weixin")
    stored = f"{vendor.mp_secret} {vendor.mch_secret} {merchant_row.sealed} {merchant_row.public}"
    for name, secret in SECRETS.items():
        assert secret not in stored, f"{name} stored in the clear"
    box = SecretBox.from_master(bytes.fromhex(MASTER_SECRET))
    opened = await wechat_merchant(vendor, box)
    assert opened.api_v3_key == API_V3_KEY and opened.private_key == PRIVATE_KEY
    assert opened.mch_id == "1900000109" and opened.platform_public_key == PLATFORM_PUBLIC
    assert API_V3_KEY not in repr(opened) and "PRIVATE" not in repr(opened)
    with pytest.raises(SecretUnreadable):
        await wechat_merchant(vendor, SecretBox.from_master(b"\x22" * 32))

    # Changing one field keeps the others; an empty string clears a secret.
    await api.call("PUT", "/vendors/PAYS/mxx", {"mch_apiv3_key": "", "mch_gid": "1900000110"})
    read = (await api.call("GET", "/vendors/PAYS")).data
    assert not read["mch_apiv3_key_set"] and read["mch_private_key_set"]


async def test_secrets_stored_before_sealing_are_sealed_at_start(
    database_url: str, node_factory, api: ApiClient
):
    await api.call(
        "POST", "/vendors", {"vid": "OLDS", "user": "olds", "pwd": md5("x"), "name": "Old"}
    )
    # A row as an earlier version wrote it: the secrets in the clear.
    await Vendor.filter(code="OLDS").update(mp_secret=MP_SECRET, mch_secret=MCH_SECRET)
    await node_factory(database_url=database_url)  # the data migration runs at start
    vendor = await Vendor.get(code="OLDS")
    assert is_sealed(vendor.mp_secret) and is_sealed(vendor.mch_secret)
    box = SecretBox.from_master(bytes.fromhex(MASTER_SECRET))
    assert box.open(vendor.mp_secret, "vendor.OLDS.mp_secret") == MP_SECRET
    assert box.open(vendor.mch_secret, "vendor.OLDS.mch_secret") == MCH_SECRET
    # Sealed under one field's name, a value does not open as another's.
    with pytest.raises(SecretUnreadable):
        box.open(vendor.mp_secret, "vendor.OLDS.mch_secret")


async def test_a_vendors_secret_copied_into_another_vendors_row_does_not_open(
    database_url: str, node_factory, api: ApiClient
):
    for vid, secret in (("SECA", MP_SECRET), ("SECB", "mp-secret-of-b")):
        await api.call(
            "POST", "/vendors",
            {"vid": vid, "user": f"{vid.lower()}-admin", "pwd": md5("x"), "name": vid,
             "mp_appid": f"wx{vid.lower()}", "mp_secret": secret},
        )  # fmt: skip
    a = await Vendor.get(code="SECA")
    box = SecretBox.from_master(bytes.fromhex(MASTER_SECRET))
    assert open_vendor_secret(a, "mp_secret", box) == MP_SECRET
    # Whoever can write the database copies A's sealed secret into B's row: B would then
    # sign its members' WeChat logins with A's secret. Sealed for A, it does not open as B's.
    await Vendor.filter(code="SECB").update(mp_secret=a.mp_secret)
    with pytest.raises(SecretUnreadable):
        open_vendor_secret(await Vendor.get(code="SECB"), "mp_secret", box)
    await node_factory(database_url=database_url)  # nor does a start re-seal it as B's
    b = await Vendor.get(code="SECB")
    assert b.mp_secret == a.mp_secret
    with pytest.raises(SecretUnreadable):
        open_vendor_secret(b, "mp_secret", box)


async def test_secrets_sealed_before_they_were_bound_to_their_vendor_are_sealed_again_at_start(
    database_url: str, node_factory, api: ApiClient
):
    await api.call(
        "POST", "/vendors", {"vid": "OLDB", "user": "oldb", "pwd": md5("x"), "name": "Old"}
    )
    box = SecretBox.from_master(bytes.fromhex(MASTER_SECRET))
    # As a node of the earlier version sealed them: for the field only.
    legacy = {name: box.seal(value, f"vendor.{name}") for name, value in
              (("mp_secret", MP_SECRET), ("mch_secret", MCH_SECRET))}  # fmt: skip
    await Vendor.filter(code="OLDB").update(**legacy)
    # Still read while a rolling upgrade lets an older node write them...
    assert open_vendor_secret(await Vendor.get(code="OLDB"), "mp_secret", box) == MP_SECRET
    await node_factory(database_url=database_url)
    # ...and sealed again for their vendor at the next start.
    vendor = await Vendor.get(code="OLDB")
    assert vendor.mp_secret != legacy["mp_secret"]
    assert box.open(vendor.mp_secret, "vendor.OLDB.mp_secret") == MP_SECRET
    assert box.open(vendor.mch_secret, "vendor.OLDB.mch_secret") == MCH_SECRET
