"""What every vendor route shares: the path's vendor (if the caller may see it), its path
models and the short answer naming it."""

from __future__ import annotations

from typing import Any

from aquafleet.api.errors import NotFoundError
from aquafleet.api.routing import Call
from aquafleet.api.schemas import PathParams, RequestModel, ResponseModel, VendorCode
from aquafleet.models.vendors import Vendor


class VendorPath(PathParams):
    vid: VendorCode


class VidOut(ResponseModel):
    vid: str


async def get_vendor(call: Call) -> Vendor:
    """The path's vendor, if the caller may see it (404 otherwise, never 403)."""
    vid = call.params.vid
    if not call.principal.may_see_vendor(vid):
        raise NotFoundError(f"vendor {vid} not found")
    vendor = await Vendor.get_or_none(code=vid)
    if vendor is None:
        raise NotFoundError(f"vendor {vid} not found")
    return vendor


def changes_of(model: RequestModel, *, skip: frozenset[str] = frozenset({"vid"})) -> dict[str, Any]:
    return {k: v for k, v in model.model_dump(exclude_unset=True).items() if k not in skip}
