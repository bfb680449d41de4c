"""The token service against the real Redis: what it stores, rotation, revocation, pruning."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from aquafleet.api.tokens import PRUNE_SESSIONS_OVER, TokenRejected, TokenService
from aquafleet.gateway.tasks import cancel_and_wait
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


async def test_a_session_kept_alive_by_refreshes_still_ends_with_its_account(
    redis_client: aioredis.Redis, redis_prefix: str
):
    """A refresh extends the session past the login's refresh lifetime; the account's set of
    sids must live as long, or a password change or a disabling no longer finds the session
    (an app that only ever refreshes stayed logged in through them)."""
    tokens = TokenService(redis_client, redis_prefix, refresh_ttl_s=2)
    pair = await tokens.issue(ALICE)
    await asyncio.sleep(1.0)
    pair, _ = await tokens.refresh(pair["refresh_token"])  # the session now lives to ~3 s
    await asyncio.sleep(1.3)  # past the login's 2 s, within the refreshed session's life
    assert await tokens.authenticate(pair["access_token"]) == ALICE
    assert await tokens.revoke_subject(Role.AGENT, "7") == 1
    with pytest.raises(TokenRejected):
        await tokens.authenticate(pair["access_token"])
    with pytest.raises(TokenRejected):
        await tokens.refresh(pair["refresh_token"])


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


async def _following(*services: TokenService) -> list[asyncio.Task[None]]:
    """Start each service's revocation follower; return once every one is subscribed."""
    tasks = [asyncio.create_task(s.follow_revocations()) for s in services]
    for _ in range(200):  # bounded: 2 s
        if all(s._following for s in services):
            return tasks
        await asyncio.sleep(0.01)
    raise AssertionError("the revocation channel was not followed")


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    assert not await cancel_and_wait(tasks), "a revocation follower did not stop"


async def _rejected_within(service: TokenService, token: str, polls: int = 200) -> bool:
    """True once `service` rejects `token` (polled, bounded: 2 s)."""
    for _ in range(polls):
        try:
            await service.authenticate(token)
        except TokenRejected:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_a_cached_token_is_refused_on_every_node_once_revoked(
    redis_client: aioredis.Redis, redis_prefix: str
):
    """Two nodes that both answered a token from memory: logout on one, a password change
    (every session of the account) and a rotation on the other: the old tokens stop working
    on both, the node making the change at once."""
    node_a = TokenService(redis_client, redis_prefix, cache_s=30)
    node_b = TokenService(redis_client, redis_prefix, cache_s=30)
    tasks = await _following(node_a, node_b)
    try:
        pairs = [await node_a.issue(ALICE) for _ in range(3)]
        for pair in pairs:
            for node in (node_a, node_b):
                assert await node.authenticate(pair["access_token"]) == ALICE
        logged_out, changed, rotated = (p["access_token"] for p in pairs)

        await node_a.revoke(logged_out)
        with pytest.raises(TokenRejected):
            await node_a.authenticate(logged_out)
        assert await _rejected_within(node_b, logged_out)

        new_pair, _ = await node_b.refresh(pairs[2]["refresh_token"])
        with pytest.raises(TokenRejected):
            await node_b.authenticate(rotated)
        assert await _rejected_within(node_a, rotated)
        assert await node_a.authenticate(new_pair["access_token"]) == ALICE

        assert await node_b.revoke_subject(Role.AGENT, "7") == 2
        for token in (changed, new_pair["access_token"]):
            with pytest.raises(TokenRejected):
                await node_b.authenticate(token)
            assert await _rejected_within(node_a, token)
    finally:
        await _stop(tasks)


async def test_without_the_revocation_channel_every_check_reads_the_session(
    redis_client: aioredis.Redis, redis_prefix: str
):
    """A node that is not following the channel (stopped, or Redis lost it) keeps nothing:
    a session ended behind its back (here: deleted in Redis) is refused at once."""
    node = TokenService(redis_client, redis_prefix, cache_s=30)
    tasks = await _following(node)
    pair = await node.issue(ALICE)
    assert await node.authenticate(pair["access_token"]) == ALICE
    await _stop(tasks)
    assert not node._following
    await redis_client.delete(f"{redis_prefix}:api:sess:{pair['access_token'].split('.')[1]}")
    with pytest.raises(TokenRejected):
        await node.authenticate(pair["access_token"])
