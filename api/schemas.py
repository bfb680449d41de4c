"""Schema building blocks every resource shares: strict models, formats, list queries.

One pydantic model per resource shape: it validates the input and is the OpenAPI schema.
Request models forbid unknown fields (docs/api.md); answers are built from response models.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticUndefined

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


def text(
    max_length: int, *, default: Any = PydanticUndefined, min_length: int = 0, description: str = ""
) -> Any:
    """A plain text field of bounded length (no control characters)."""
    return Field(
        default,
        min_length=min_length,
        max_length=max_length,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description=description or None,
    )


class RequestModel(BaseModel):
    """A request body: unknown fields are refused (422 validation_failed)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class PathParams(BaseModel):
    """Path parameters; a value breaking its pattern answers 404 (no such record)."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
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


class Empty(ResponseModel):
    """No data."""
