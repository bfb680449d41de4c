"""The domain's exception root."""

from __future__ import annotations


class DomainError(Exception):
    """A business rule refused the operation; `code` is stable, the message is for people."""

    code = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class RequestReused(Conflict):
    """A client's idempotency key (an order's Idempotency-Key, a withdrawal's or a service
    change's request_id) sent again with another request than the one it was first used for:
    answering the first would make the client think what it asks now was done. `data`, when
    given, says what the key was used for."""

    code = "idempotency_key_reused"

    def __init__(self, message: str, data: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self._data = data

    @property
    def data(self) -> dict[str, object] | None:
        return self._data


class InvalidInput(DomainError):
    code = "invalid_input"


class Forbidden(DomainError):
    """The caller's role may not do this to this record."""

    code = "forbidden"


class Unavailable(DomainError):
    """A backing store (Redis, the database) did not answer; trying again later may work."""

    code = "service_unavailable"


class DatabaseUnavailable(Unavailable):
    """The database could not be reached or opened (down, no such database, refused login)."""
