"""Vendors (运营商), AX-01..13: platform admin only. Secrets are write-only.

Thin: the rules live in models.vendors and models.merchants. The handlers are split by concern:
profiles (AX-01..06, AX-13: the vendor's record and admin account), merchants (AX-07: its WeChat
official account and WeChat Pay credentials, and what the Alipay and card acquirer PUTs of
api/alipay.py and api/cards.py share) and terms (AX-08..12 and the app key).
"""

from __future__ import annotations

from aquafleet.api.routing import RouteTable
from aquafleet.api.vendors import merchants, profiles, terms
from aquafleet.api.vendors.access import VendorPath, VidOut, get_vendor
from aquafleet.api.vendors.merchants import MERCHANT_PUT_DESCRIPTION, set_vendor_merchant

# Included in this order so the OpenAPI document lists the paths in the seed's order
# (AX-01..06, AX-07, AX-08..12).
routes = RouteTable(
    "vendors",
    "Vendors (brands, 运营商): AX-01..13, the platform admin's. `vid` is the 4-character "
    "vendor code. pwd, mp_secret and mch_secret are write-only.",
).include(profiles.routes, merchants.routes, terms.routes)

__all__ = [
    "MERCHANT_PUT_DESCRIPTION",
    "VendorPath",
    "VidOut",
    "get_vendor",
    "routes",
    "set_vendor_merchant",
]
