"""Property-based run of the served OpenAPI document (schemathesis): no 500s, and every
answer conforms to the document (status code, content type, body schema)."""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import ApiClient, Tenant

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 12
# The operations are dealt round-robin to this many shards, each its own test on its own node,
# so that the run grows with the API without any one test outgrowing its time-out and so
# that pytest-xdist spreads it over the workers.
SHARDS = 4


def run_schemathesis(
    base_url: str, token: str, skip: set[str], shard: int
) -> tuple[int, int, list[str]]:
    """Every operation of the shard, a bounded number of valid and of invalid generated cases
    each; the number of operations run, of requests sent and the failures found."""
    document = requests.get(f"{base_url}/api/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    sent = 0
    session = requests.Session()
    operations = [
        operation
        for position, operation in enumerate(r.ok() for r in schema.get_all_operations())
        if position % SHARDS == shard and operation.definition.raw.get("operationId") not in skip
    ]
    for operation, mode in [(o, m) for o in operations for m in GenerationMode]:

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            nonlocal sent
            sent += 1
            response = case.call(
                base_url=base_url,
                session=session,
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # collect, report all at the end
                failures.append(f"{case.operation.label}: {type(exc).__name__}: {exc}"[:2000])

        check()
    session.close()
    return len(operations), sent, failures


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shard", range(SHARDS))
async def test_the_served_document_holds_under_generated_requests(
    api: ApiClient, tenants: tuple[Tenant, Tenant], shard: int
):
    base_url = api.base
    # Logging out or changing the password would end the token the run uses.
    skip = {"logout", "change_own_password"}
    operations, sent, failures = await asyncio.to_thread(
        run_schemathesis, base_url, api.token or "", skip, shard
    )
    assert not failures, "\n".join(failures[:20])
    assert operations >= 10  # the shard has a share of the API
    assert sent >= 2 * operations  # every operation was sent valid and invalid cases
