"""The token service against the real Redis: what it stores, rotation, revocation, pruning."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from aquafleet.api.tokens import PRUNE_SESSIONS_OVER, TokenRejected, TokenService
from aquafleet.models.tenancy import Principal, Role

ALICE = Principal(Role.AGENT, "7", vendor_code="AAAA", agent_path="/3/")


async def test_only_hashes_of_tokens_are_stored(redis_client: aioredis.Redis, redis_prefix: str):
    tokens = TokenService(redis_client, redis_prefix)
    pair = await tokens.issue(ALICE)
    assert await tokens.authenticate(pair["access_token"]) == ALICE
    stored = b"".join(
        [k + b"".join(v for kv in (await redis_client.hgetall(k)).items() for v in kv)
         if (await redis_client.type(k)) == b"hash" else k
         async for k in redis_client.scan_iter(match=f"{redis_prefix}:*")]
    )  # fmt: skip
    for token in (pair["access_token"], pair["refresh_token"]):
        assert token.split(".")[2].encode() not in stored


async def test_a_loader_refreshes_the_principal_or_ends_the_session(
    redis_client: aioredis.Redis, redis_prefix: str
):
    tokens = TokenService(redis_client, redis_prefix)
    moved = Principal(Role.AGENT, "7", vendor_code="AAAA", agent_path="/4/")
    answers: list[Principal | None] = [moved, None]

    async def loader(principal: Principal) -> Principal | None:
        assert principal.subject == "7"
        return answers.pop(0)

    tokens.register_loader({Role.AGENT}, loader)
    pair = await tokens.issue(ALICE)
    pair, principal = await tokens.refresh(pair["refresh_token"])
    assert principal == moved and await tokens.authenticate(pair["access_token"]) == moved
    with pytest.raises(TokenRejected):
        await tokens.refresh(pair["refresh_token"])  # the loader says: no longer
    with pytest.raises(TokenRejected):
        await tokens.authenticate(pair["access_token"])


async def test_revoke_subject_ends_every_session_of_one_account_only(
    redis_client: aioredis.Redis, redis_prefix: str
):
    tokens = TokenService(redis_client, redis_prefix)
    other = Principal(Role.MEMBER, "7")  # same subject text, another role
    mine = [await tokens.issue(ALICE) for _ in range(3)]
    theirs = await tokens.issue(other)
    assert await tokens.revoke_subject(Role.AGENT, "7") == 3
    for pair in mine:
        with pytest.raises(TokenRejected):
            await tokens.authenticate(pair["access_token"])
    assert await tokens.authenticate(theirs["access_token"]) == other
    assert await tokens.revoke_subject(Role.AGENT, "7") == 0


async def test_expired_sessions_are_pruned_from_an_accounts_set(
    redis_client: aioredis.Redis, redis_prefix: str
):
    tokens = TokenService(redis_client, redis_prefix)
    subject_key = f"{redis_prefix}:api:subj:agent:7"
    for _ in range(PRUNE_SESSIONS_OVER):
        await tokens.issue(ALICE)
    for key in [k async for k in redis_client.scan_iter(match=f"{redis_prefix}:api:sess:*")]:
        await redis_client.delete(key)  # as if they had expired
    assert await redis_client.scard(subject_key) == PRUNE_SESSIONS_OVER
    live = await tokens.issue(ALICE)
    assert await redis_client.scard(subject_key) == 1
    assert await tokens.authenticate(live["access_token"]) == ALICE


@pytest.mark.parametrize("token", ["", "a", "a.x.y", "r." + "0" * 32 + "." + "x" * 43, "a." * 40])
async def test_malformed_tokens_are_rejected_without_a_lookup(
    redis_client: aioredis.Redis, redis_prefix: str, token: str
):
    tokens = TokenService(redis_client, redis_prefix)
    with pytest.raises(TokenRejected):
        await tokens.authenticate(token)
