"""Products (商品, AC-01..07): a vendor's catalogue (docs/api-shop.md).

Thin: the rules live in models.products (ids, billing and packages, commission, filters,
retire-not-remove). Reads are the seed's A+C and also open to visitors who have not logged in
when the vendor switched its `shop_public` option on (seed FAQ 7); they name the vendor (`vid`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from typing_extensions import TypeAliasType

from aquafleet.api.errors import Forbidden, NotFoundError, Unauthorized, ValidationFailed
from aquafleet.api.list_filters import named_vendor
from aquafleet.api.routing import AUTHENTICATOR, PUBLIC, Call, Page, RouteTable
from aquafleet.api.schemas import (
    UNSET,
    ListQuery,
    PathParams,
    Query,
    RequestModel,
    ResponseModel,
    UtcDateTime,
    VendorCode,
    text,
)
from aquafleet.api.signing import SIGNED_HEADERS
from aquafleet.models.errors import NotFound
from aquafleet.models.products import (
    ALL_BILLING,
    MAX_COMMISSION_LEVELS,
    MAX_FEN,
    MAX_PACKAGE_DAYS,
    MAX_PACKAGE_ML,
    MAX_PACKAGES,
    MAX_TRIAL_DAYS,
    Product,
    ProductState,
    ProductType,
    anonymous_browsing,
    create_product,
    delete_product,
    find_product,
    may_change,
    shop_vendor,
    update_product,
    visible_products,
)
from aquafleet.models.tenancy import ANY_ROLE, PLATFORM_OR_VENDOR, Principal, Role

routes = RouteTable(
    "products",
    "Products (商品, AC-01..07): a vendor's catalogue, its prices (fen), rent packages, "
    "commission and filter specification (docs/api-shop.md).",
)

MAX_FILTERS = 16
MAX_FLOW_SETTINGS = 8
MAX_LIFE_H = 1_000_000

# A list item cannot carry a field's bounds, and api.schemas refuses a bare `list[int]`: the
# alias bounds the item itself (strict bodies refuse booleans and floats already).
Percent = TypeAliasType("Percent", Annotated[int, Field(ge=0, le=100)])

Fen = Annotated[int, Field(ge=0, le=MAX_FEN, description="an amount in fen (1 yuan = 100)")]
Url = Annotated[str, Field(max_length=255, pattern=r"^(https?://\S+)?$")]


class ResourceIn(RequestModel):
    """商品资源: links to the pictures and pages of the product."""

    prev_res: Url = Field("", description="preview picture")
    intro_res: list[Url] = Field(default_factory=list, max_length=20, description="introduction")
    detail_res: Url = Field("", description="detail page")


class PackageIn(RequestModel):
    """A rent package: what it is called, its key, its price (`value`, fen) and what it buys:
    `days` of a time rental or `ml` of a volume rental (exactly one)."""

    name: str = text(32, min_length=1, description="shown to members, e.g. 30天")
    key: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$", examples=["30d"])
    value: Fen
    days: int | None = Field(None, ge=1, le=MAX_PACKAGE_DAYS, description="days it buys")
    ml: int | None = Field(None, ge=1, le=MAX_PACKAGE_ML, description="millilitres it buys")


class RentIn(RequestModel):
    """租金配置: the deposit (fen, per device) and the packages (the seed's `config`)."""

    deposit: Fen = 0
    config: list[PackageIn] = Field(default_factory=list, max_length=MAX_PACKAGES)
    trial_days: int = Field(
        0,
        ge=0,
        le=MAX_TRIAL_DAYS,
        description="试用 (seed FAQ 5): free days every new time rental of the product starts "
        "with, on top of the package's days (time-rental products only)",
    )


class CommisIn(RequestModel):
    """佣金配置: `config[i]` is the percent of the order's goods and rent paid to referral
    level i+1 (the buyer's referrer, its referrer, ...); at most 3 levels, 100 in all."""

    enabled: bool = False
    config: list[Percent] = Field(
        default_factory=list, max_length=MAX_COMMISSION_LEVELS, examples=[[21, 9, 0]]
    )
    renewal: bool = Field(
        default=True,
        description="renewals (order type 3) of the product earn too (docs/commissions.md)",
    )


class FilterIn(RequestModel):
    order: int = Field(ge=0, le=255, description="the stage's number (the device's index)")
    name: str = text(64, min_length=1)
    timer_mode: int = Field(ge=0, le=2, description="0 both timers, 1 power-on, 2 working")
    lifetime: int = Field(ge=0, le=MAX_LIFE_H, description="power-on life, hours")
    worklife: int = Field(ge=0, le=MAX_LIFE_H, description="working life, hours")


class FlowSettingIn(RequestModel):
    name: str = text(16, min_length=1, description="常温, 冰水, 温水, 热水")
    key: str = Field(pattern=r"^[a-z0-9_]{1,16}$", examples=["normal", "cold", "warm", "hot"])
    value: int = Field(ge=0, le=100_000, description="flow, ml per second")


class FlowmeterIn(RequestModel):
    measure_mode: int = Field(
        0, ge=0, le=2, description="计量模式: 0 the device reports, 1 timed, 2 metered"
    )
    config: list[FlowSettingIn] = Field(default_factory=list, max_length=MAX_FLOW_SETTINGS)


class SpecificationIn(RequestModel):
    """产品规格 (AC-05/06): mode, filters, flowmeter."""

    mode: int = Field(0, ge=0, le=255, description="kept as given (the seed names no modes)")
    filters: list[FilterIn] = Field(default_factory=list, max_length=MAX_FILTERS)
    flowmeter: FlowmeterIn = Field(default_factory=lambda: FlowmeterIn.model_validate({}))


BILLING_DESCRIPTION = (
    f"计费方案, a sum of bits (1..{ALL_BILLING}): 1 sale, 2 time rental, 4 volume rental, 8 vending"
)


class ProductIn(RequestModel):
    """AC-02: the seed's fields; every amount in fen."""

    state: ProductState = Field(ProductState.DRAFT, description="0 draft, 1 published, 2 retired")
    type: ProductType = Field(ProductType.BUY, description="1 购买 buy, 2 预约 reserve")
    prod_id: Literal[""] = Field("", description="ids are allocated: empty or omitted")
    billing: int = Field(1, ge=1, le=ALL_BILLING, description=BILLING_DESCRIPTION)
    name: str = text(64, min_length=1)
    desc: str = text(500, default="")
    tags: str = text(255, default="", description="comma-separated, as the seed shows")
    sequence: int = Field(0, description="sort key of the catalogue (ascending)")
    bonus: bool = Field(False, description="buying earns points (积分)")
    price: Fen = 0
    orig_price: Fen = 0
    freight: Fen = Field(0, description="per unit, fen")
    install: bool = False
    maintain: bool = False
    install_cost: Fen = Field(0, description="once per unit, fen")
    maintain_cost: Fen = Field(0, description="per visit, fen")
    resource: ResourceIn = Field(default_factory=lambda: ResourceIn.model_validate({}))
    notify_url: Url = Field("", description="kept as given (the seed marks it '?')")
    rent: RentIn = Field(default_factory=lambda: RentIn.model_validate({}))
    commis: CommisIn = Field(default_factory=CommisIn)
    specification: SpecificationIn = Field(
        default_factory=lambda: SpecificationIn.model_validate({})
    )
    vid: VendorCode = Field(UNSET, description="the vendor (the platform names it)")


class ProductChangeIn(RequestModel):
    """AC-04: only the fields given change; a nested part given replaces the whole part."""

    state: ProductState = Field(UNSET, description="0 draft, 1 published, 2 retired")
    type: ProductType = Field(UNSET)
    billing: int = Field(UNSET, ge=1, le=ALL_BILLING, description=BILLING_DESCRIPTION)
    name: str = text(64, default=UNSET, min_length=1)
    desc: str = text(500, default=UNSET)
    tags: str = text(255, default=UNSET)
    sequence: int = Field(UNSET)
    bonus: bool = Field(UNSET)
    price: Fen = Field(UNSET)
    orig_price: Fen = Field(UNSET)
    freight: Fen = Field(UNSET)
    install: bool = Field(UNSET)
    maintain: bool = Field(UNSET)
    install_cost: Fen = Field(UNSET)
    maintain_cost: Fen = Field(UNSET)
    resource: ResourceIn = Field(UNSET)
    notify_url: Url = Field(UNSET)
    rent: RentIn = Field(UNSET)
    commis: CommisIn = Field(UNSET)
    specification: SpecificationIn = Field(UNSET)


class ProductOut(ResponseModel):
    """AC-01/03: the product as the seed shapes it; amounts in fen."""

    prod_id: str
    vid: str
    state: int
    type: int
    billing: int
    name: str
    desc: str
    tags: str
    sequence: int
    bonus: bool
    price: int
    orig_price: int
    freight: int
    install: bool
    maintain: bool
    install_cost: int
    maintain_cost: int
    resource: ResourceIn
    notify_url: str
    rent: RentIn
    commis: CommisIn
    specification: SpecificationIn
    create_tms: UtcDateTime
    update_tms: UtcDateTime


class PidOut(ResponseModel):
    prod_id: str


class ProductPath(PathParams):
    pid: str = Field(pattern=r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$")


class ProductListQuery(ListQuery):
    SORT_FIELDS: ClassVar[dict[str, str]] = {
        "sequence": "sequence",
        "name": "name",
        "price": "price_fen",
        "create_tms": "created_at",
    }
    sort: Literal["sequence", "name", "price", "create_tms"] = "sequence"
    vid: VendorCode = Field(UNSET, description="the vendor (platform and visitors name it)")
    state: ProductState = Field(UNSET, description="admins only: members see published ones")
    type: ProductType = Field(UNSET)
    billing: int = Field(UNSET, ge=1, le=ALL_BILLING, description="has every one of these bits")
    name: str = Field(UNSET, max_length=64, description="name contains")


class ReadQuery(Query):
    vid: VendorCode = Field(UNSET, description="visitors who have not logged in name the vendor")


class DeleteQuery(Query):
    confirm: str = Field(
        pattern=r"^[A-Z0-9]{4}[0-9]{12}[0-9A-F]{4}$",
        description="删除确认: the product's id again",
    )


# ----------------------------------------------------------------------------- shaping

_FEN_COLUMNS = {
    "price": "price_fen",
    "orig_price": "orig_price_fen",
    "freight": "freight_fen",
    "install_cost": "install_cost_fen",
    "maintain_cost": "maintain_cost_fen",
}


def product_out(product: Product) -> ProductOut:
    return ProductOut(
        prod_id=product.pid,
        vid=product.vendor_id,
        state=int(product.state),
        type=int(product.type),
        billing=product.billing,
        name=product.name,
        desc=product.desc,
        tags=product.tags,
        sequence=product.sequence,
        bonus=product.bonus,
        install=product.install,
        maintain=product.maintain,
        resource=ResourceIn.model_validate(product.resource or {}),
        notify_url=product.notify_url,
        rent=RentIn(
            deposit=product.deposit_fen,
            config=[PackageIn.model_validate(p) for p in product.rent_packages],
            trial_days=product.trial_days,
        ),
        commis=CommisIn(
            enabled=product.commis_enabled,
            config=list(product.commis_config),
            renewal=product.commis_renewal,
        ),
        specification=SpecificationIn.model_validate(product.specification or {}),
        create_tms=product.created_at,
        update_tms=product.updated_at,
        **{name: getattr(product, column) for name, column in _FEN_COLUMNS.items()},
    )


def columns(body: ProductIn | ProductChangeIn) -> dict[str, Any]:
    """The model's column values for the fields the body gives."""
    given = body.model_fields_set - {"prod_id", "vid"}
    values: dict[str, Any] = {}
    for name in given:
        value = getattr(body, name)
        if name in _FEN_COLUMNS:
            values[_FEN_COLUMNS[name]] = value
        elif name == "rent":
            values["deposit_fen"] = value.deposit
            values["rent_packages"] = [p.model_dump(exclude_none=True) for p in value.config]
            values["trial_days"] = value.trial_days
        elif name == "commis":
            values["commis_enabled"] = value.enabled
            values["commis_config"] = list(value.config)
            values["commis_renewal"] = value.renewal
        elif name in ("resource", "specification"):
            values[name] = value.model_dump()
        else:
            values[name] = value
    return values


# ----------------------------------------------------------------------------- access


async def optional_principal(call: Call) -> Principal | None:
    """The caller of a public read when it presents credentials (wrong ones answer 401); the
    catalogue is A+C: a technician's credentials answer 403 (they would read drafts)."""
    headers = call.request.headers
    if "Authorization" in headers or any(name in headers for name in SIGNED_HEADERS):
        principal = await call.app[AUTHENTICATOR].authenticate(call.request, b"")
        if principal.role not in ANY_ROLE:
            raise Forbidden(f"a {principal.role} account may not call this endpoint")
        return principal
    return None


async def browsing_vendor(principal: Principal | None, vid: str | None) -> str | None:
    """The vendor whose published products a visitor sees; None for a logged-in caller.
    A visitor names an open vendor that allows anonymous browsing, or gets 401."""
    if principal is not None:
        return None
    if vid is None:
        raise _login_needed()
    try:
        vendor = await shop_vendor(vid)
    except NotFound:
        raise _login_needed() from None
    if not anonymous_browsing(vendor):
        raise _login_needed()
    return vid


def _login_needed() -> Unauthorized:
    return Unauthorized("log in, or name a vendor (vid) whose shop is open to visitors")


async def changeable_product(call: Call) -> Product:
    product = await find_product(call.principal, call.params.pid)
    if not may_change(call.principal, product):  # the platform, or its own vendor only
        raise NotFoundError(f"product {product.pid} not found")
    return product


# ----------------------------------------------------------------------------- routes

READ_ROLES = (
    "A+C (a technician: 403); visitors who have not logged in when the vendor allows it (cfg "
    "shop_public)"
)


@routes.get(
    "/products",
    seed="AC-01",
    summary="List products",
    roles=PUBLIC,
    query=ProductListQuery,
    response=ProductOut,
    many=True,
    errors=(401, 403),
    description=f"{READ_ROLES}. The platform sees every vendor's products (filter by vid); an "
    "admin its vendor's; a member and a visitor the published ones of their vendor, sorted by "
    "sequence.",
)
async def list_products(call: Call) -> Page:
    query: ProductListQuery = call.query
    principal = await optional_principal(call)
    visitor_vid = await browsing_vendor(principal, query.vid)
    qs = visible_products(principal, visitor_vid)
    filters: dict[str, Any] = {}
    if query.vid is not None:
        filters["vendor_id"] = (
            query.vid if principal is None else await named_vendor(principal, query.vid)
        )
    if query.state is not None:  # members and visitors: within the published ones
        filters["state"] = query.state
    if query.type is not None:
        filters["type"] = query.type
    if query.name is not None:
        filters["name__icontains"] = query.name
    if query.billing is not None:  # every billing value holding these bits
        wanted = query.billing
        filters["billing__in"] = [v for v in range(1, ALL_BILLING + 1) if v & wanted == wanted]
    rows, total = await query.page(qs.filter(**filters), pk="pid")
    return Page([product_out(p) for p in rows], total)


@routes.post(
    "/products",
    seed="AC-02",
    summary="Add a product",
    roles=PLATFORM_OR_VENDOR,
    body=ProductIn,
    response=PidOut,
    errors=(404,),
    description="A#. The id is allocated (vendor code + 12-digit serial + 4 check digits); "
    "the platform names the vendor (`vid`), a vendor adds to its own catalogue.",
)
async def add_product(call: Call) -> PidOut:
    body: ProductIn = call.body
    principal = call.principal
    if principal.role is Role.PLATFORM:
        if body.vid is None:
            raise ValidationFailed(
                "body vid: the platform names the vendor",
                data=[{"field": "vid", "message": "the platform names the vendor"}],
            )
        vendor_code = body.vid
    else:
        assert principal.vendor_code is not None
        if body.vid is not None and body.vid != principal.vendor_code:
            raise NotFoundError(f"vendor {body.vid} not found")
        vendor_code = principal.vendor_code
    product = await create_product(vendor_code, columns(body))
    return PidOut(prod_id=product.pid)


@routes.get(
    "/products/{pid}",
    seed="AC-03",
    summary="Read a product",
    roles=PUBLIC,
    params=ProductPath,
    query=ReadQuery,
    response=ProductOut,
    errors=(401, 403),
    description=f"{READ_ROLES}.",
)
async def read_product(call: Call) -> ProductOut:
    principal = await optional_principal(call)
    visitor_vid = await browsing_vendor(principal, call.query.vid)
    return product_out(await find_product(principal, call.params.pid, visitor_vid))


@routes.put(
    "/products/{pid}",
    seed="AC-04",
    summary="Change a product",
    roles=PLATFORM_OR_VENDOR,
    params=ProductPath,
    body=ProductChangeIn,
    response=PidOut,
    description="A#. Only the fields given change; `rent`, `commis`, `resource` and "
    "`specification` are replaced whole. Orders keep the product as it was when bought.",
)
async def change_product(call: Call) -> PidOut:
    product = await changeable_product(call)
    await update_product(product, columns(call.body))
    return PidOut(prod_id=product.pid)


@routes.get(
    "/products/{pid}/prof",
    seed="AC-05",
    summary="Read a product's specification",
    roles=PUBLIC,
    params=ProductPath,
    query=ReadQuery,
    response=SpecificationIn,
    errors=(401, 403),
    description=f"{READ_ROLES}. 商品属性: the specification (mode, filters, flowmeter).",
)
async def read_specification(call: Call) -> SpecificationIn:
    principal = await optional_principal(call)
    visitor_vid = await browsing_vendor(principal, call.query.vid)
    product = await find_product(principal, call.params.pid, visitor_vid)
    return SpecificationIn.model_validate(product.specification or {})


@routes.put(
    "/products/{pid}/prof",
    seed="AC-06",
    summary="Change a product's specification",
    roles=PLATFORM_OR_VENDOR,
    params=ProductPath,
    body=SpecificationIn,
    response=SpecificationIn,
    description="A#. Replaces the whole specification; answers it as stored.",
)
async def change_specification(call: Call) -> SpecificationIn:
    product = await changeable_product(call)
    await update_product(product, {"specification": call.body.model_dump()})
    return SpecificationIn.model_validate(product.specification)


@routes.delete(
    "/products/{pid}",
    seed="AC-07",
    summary="Delete a product",
    roles=PLATFORM_OR_VENDOR,
    params=ProductPath,
    query=DeleteQuery,
    errors=(422,),
    description="A#. 删除确认: `?confirm=<the product's id>`. A product no order references "
    "is removed; one that an order references is retired (state 2) and stays readable by "
    "admins: orders point at it for ever.",
)
async def remove_product(call: Call) -> None:
    product = await changeable_product(call)
    if call.query.confirm != product.pid:
        raise ValidationFailed(
            "query confirm: must repeat the product's id",
            data=[{"field": "confirm", "message": "must repeat the product's id"}],
        )
    await delete_product(product)


__all__ = ["routes"]
