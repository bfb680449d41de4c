"""Schema building blocks every resource shares: strict models, formats, list queries.

One pydantic model per resource shape: it validates the input and is the OpenAPI schema.
Request models forbid unknown fields (docs/api.md); answers are built from response models.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
import unicodedata
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

if TYPE_CHECKING:
    from tortoise.models import Model
    from tortoise.queryset import QuerySet

    M = TypeVar("M", bound=Model)

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

# The default of a field that may be omitted but, when given, not null: `x: str = Field(UNSET)`
# (the schema then says string, not string-or-null, and an explicit null is refused).
UNSET: Any = None


def iso_utc(value: dt.datetime) -> str:
    """The seed's timestamp format, YYYY-MM-DDTHH:MM:SSZ, in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime(ISO_FORMAT)


UtcDateTime = Annotated[
    dt.datetime,
    PlainSerializer(iso_utc, return_type=str, when_used="always"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$",
            "examples": ["2018-01-02T03:04:05Z"],
        },
        mode="serialization",
    ),
]
"""A timestamp answered as YYYY-MM-DDTHH:MM:SSZ (UTC)."""

VendorCode = Annotated[
    str, Field(pattern=r"^[A-Z0-9]{4}$", description="vendor code (vid): 4 characters A-Z/0-9")
]
Mobile = Annotated[
    str,
    Field(
        pattern=r"^1[3-9][0-9]{9}$",
        description="mainland China mobile number: 11 digits starting 13-19",
        examples=["13900000000"],
    ),
]
OptionalMobile = Annotated[
    str,
    Field(
        pattern=r"^(1[3-9][0-9]{9})?$",
        description="mainland China mobile number, or empty",
        examples=["13900000000"],
    ),
]
Email = Annotated[
    str,
    Field(
        max_length=128,
        pattern=r"^([^@\s]+@[^@\s]+\.[^@\s]+)?$",
        description="e-mail address, or empty",
        examples=["marvin.nps@gmail.com"],
    ),
]
PasswordMd5 = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-fA-F]{32}$",
        description="MD5 of the password, 32 hex digits (the seed: passwords travel as MD5)",
        examples=["e10adc3949ba59abbe56e057f20f883e"],
    ),
]
Username = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$",
        description="admin user name: 3-64 letters, digits, _ . @ -",
        examples=["dochen"],
    ),
]


# Characters a human-readable text may not hold: controls (Cc: C0, DEL, C1 with U+0085), format
# characters (Cf: bidi overrides U+202A-202E and isolates, zero-width U+200B-200F, BOM U+FEFF,
# soft hyphen, tags), surrogates (Cs) and the line and paragraph separators (Zl, Zp). They let
# one name pass for another in a console, or break a line in a log or a CSV.
REFUSED_TEXT_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# The same set within the BMP, surrogates aside, for the schema's `pattern` (clients can check
# before sending); `clean_text` decides, with the interpreter's Unicode tables (surrogates and
# planes beyond the BMP too).
_REFUSED_BMP = (
    r"\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891"
    r"\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f"
    r"\ufeff\ufff9-\ufffb"
)
TEXT_PATTERN = rf"^[^{_REFUSED_BMP}]*$"


def clean_text(value: Any) -> Any:
    """A text input in NFC, refused when it holds a control or format character."""
    if not isinstance(value, str):
        return value  # the str validator refuses it
    value = unicodedata.normalize("NFC", value)
    for char in value:
        if unicodedata.category(char) in REFUSED_TEXT_CATEGORIES:
            raise PydanticCustomError(
                "text_characters",
                "must not contain control or format characters (found U+{code})",
                {"code": f"{ord(char):04X}"},
            )
    return value


_TEXT_DESCRIPTION = "text (NFC; control and format characters refused)"

Text = Annotated[
    str,
    BeforeValidator(clean_text),
    Field(pattern=TEXT_PATTERN, description=_TEXT_DESCRIPTION),
]
"""Every human-readable text input (names, addresses, notes): the one validator for them."""


def text(
    max_length: int, *, default: Any = PydanticUndefined, min_length: int = 0, description: str = ""
) -> Any:
    """A `Text` field of bounded length: `name: str = text(64, min_length=1)`.

    The length counts code points after NFC normalisation.
    """
    info = Field(
        default,
        min_length=min_length,
        max_length=max_length,
        pattern=TEXT_PATTERN,
        description=description or _TEXT_DESCRIPTION,
    )
    # After the constraints, so that they reach the str inside `str | None`; it still runs
    # before them (a before-validator wraps what comes earlier).
    info.metadata.append(BeforeValidator(clean_text))
    return info


# ----------------------------------------------------------------------------- integers

# What an integer input may hold unless its field says otherwise: the database's INTEGER column
# (every id is one). A field stored in a BIGINT column declares its own bounds, within INT64.
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _refuse_bool_and_float(value: Any) -> Any:
    # JSON's false and 2.0 are not integers (bool is an int and 2.0 == 2 in Python, so a
    # Literal[0, 2] or an IntEnum would otherwise take them).
    if isinstance(value, bool | float):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _is_integer_type(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return all(type(arg) is int for arg in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, int) and annotation is not bool


def _mentions_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    return any(_mentions_int(arg) for arg in get_args(annotation) if arg is not Ellipsis)


def _already_bounded(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(
        isinstance(item, BeforeValidator) and item.func is _refuse_bool_and_float
        for item in annotation.__metadata__
    )


def _bounds(metadata: list[Any]) -> tuple[int | None, int | None]:
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge | annotated_types.Gt):
            low = int(getattr(item, "ge", getattr(item, "gt", 0)))
        if isinstance(item, annotated_types.Le | annotated_types.Lt):
            high = int(getattr(item, "le", getattr(item, "lt", 0)))
    return low, high


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """A field's type without its `| None`, and whether it had one (a union of several other
    types comes back whole)."""
    optional = False
    if get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(get_args(annotation))
        if len(members) == 1:
            annotation = members[0]
    return annotation, optional


def _bound_integer_fields(model: type[BaseModel]) -> None:
    """Make every integer input of `model` strict and bounded (one place for all routes).

    An `int` field without bounds gets the INT32 column's; declared bounds must lie within
    INT64 (a value past them would overflow the database driver: a 500). Every integer field,
    Literal and IntEnum ones too, refuses JSON booleans and floats.
    """
    changed = False
    for name, info in model.model_fields.items():
        annotation, optional = _unwrap_optional(info.annotation)
        if _already_bounded(annotation):  # inherited from a model bounded before
            continue
        if not _is_integer_type(annotation):
            if _mentions_int(info.annotation):
                raise TypeError(f"{model.__name__}.{name}: bound the integers it holds")
            continue
        metadata = list(info.metadata)
        if annotation is int:
            low, high = _bounds(metadata)
            for bound in (low, high):
                if bound is not None and not INT64_MIN <= bound <= INT64_MAX:
                    raise TypeError(f"{model.__name__}.{name}: bound {bound} is beyond INT64")
            if low is None:
                metadata.append(annotated_types.Ge(INT32_MIN))
            if high is None:
                metadata.append(annotated_types.Le(INT32_MAX))
        inner: Any = Annotated[(annotation, *metadata, BeforeValidator(_refuse_bool_and_float))]
        info.annotation = typing.Optional[inner] if optional else inner  # noqa: UP045
        info.metadata = []
        changed = True
    if changed:
        model.model_rebuild(force=True)


# ----------------------------------------------------------------------------- times


def _within_the_calendar(value: dt.datetime) -> dt.datetime:
    # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC, where every handler and the database
    # driver convert it: Python's datetime overflows (a 500), SQLite compares it as text.
    if value.tzinfo is not None:
        try:
            value.astimezone(dt.UTC)
        except OverflowError:
            raise PydanticCustomError(
                "datetime_range", "the time is out of range: in UTC, years 1..9999"
            ) from None
    return value


def _already_in_calendar(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(
        isinstance(item, AfterValidator) and item.func is _within_the_calendar
        for item in annotation.__metadata__
    )


def _bound_datetime_fields(model: type[BaseModel]) -> None:
    """Every datetime input of `model` refuses a time whose UTC lies outside years 1..9999."""
    changed = False
    for info in model.model_fields.values():
        annotation, optional = _unwrap_optional(info.annotation)
        if annotation is not dt.datetime or _already_in_calendar(annotation):
            continue
        inner: Any = Annotated[(dt.datetime, *info.metadata, AfterValidator(_within_the_calendar))]
        info.annotation = typing.Optional[inner] if optional else inner  # noqa: UP045
        info.metadata = []
        changed = True
    if changed:
        model.model_rebuild(force=True)


class _BoundedInputs(BaseModel):
    """Inputs (bodies, queries, paths): integers strict and bounded to their columns, times
    within the calendar."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        _bound_integer_fields(cls)
        _bound_datetime_fields(cls)


class RequestModel(_BoundedInputs):
    """A request body: unknown fields are refused (422 validation_failed)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class PathParams(_BoundedInputs):
    """Path parameters; a value breaking its pattern answers 404 (no such record)."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(_BoundedInputs):
    """Query parameters; unknown ones are refused (422 validation_failed)."""

    model_config = ConfigDict(extra="forbid")


MAX_LIMIT = 100
MAX_OFFSET = 1_000_000


class ListQuery(Query):
    """The seed's ?limit=10&offset=10&sort=name&order=asc; subclasses narrow `sort`."""

    SORT_FIELDS: ClassVar[dict[str, str]] = {}  # API name -> model field

    limit: int = Field(20, ge=1, le=MAX_LIMIT, description=f"records to return (1..{MAX_LIMIT})")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="records to skip")
    order: Literal["asc", "desc"] = Field("asc", description="sort direction")

    def ordering(self, pk: str | None = None) -> list[str]:
        """Tortoise order_by terms: the chosen sort field, then the primary key `pk` (when
        given) so that pages never overlap on ties."""
        sort = getattr(self, "sort", None)
        field = self.SORT_FIELDS.get(str(sort)) if sort is not None else None
        field = field or pk
        sign = "-" if self.order == "desc" else ""
        terms = [f"{sign}{field}"] if field else []
        if pk is not None and field != pk:
            terms.append(f"{sign}{pk}")
        return terms

    async def page(self, qs: QuerySet[M], pk: str) -> tuple[list[M], int]:
        """This query's page of `qs` in its order (ties broken by `pk`), and how many match."""
        ordered = qs.order_by(*self.ordering(pk))
        total = await ordered.count()  # COUNT(*) of the filters: tortoise leaves ORDER BY out
        return list(await ordered.offset(self.offset).limit(self.limit)), total


class Empty(ResponseModel):
    """No data."""
