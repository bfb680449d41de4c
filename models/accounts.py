"""Admin accounts (platform, vendor, agent, dealer) and the password hash every login uses.

Passwords arrive as the client's MD5 in hex (the seed); what is stored is an Argon2id hash of
that hex string, so the database never holds anything a client could send back. Hashing is
slow on purpose: it runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from enum import IntEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from tortoise import fields
from tortoise.exceptions import IntegrityError
from tortoise.models import Model

from aquafleet.models.agents import Agent, AgentState, path_ids
from aquafleet.models.errors import Conflict, DomainError, InvalidInput
from aquafleet.models.tenancy import Principal, Role
from aquafleet.models.vendors import Vendor, VendorState

MD5_HEX_RE = re.compile(r"^[0-9a-fA-F]{32}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{2,63}$")

# OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): ~20 ms per hash on this machine.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the account does not exist, so the answer takes as long either way.
_DUMMY_HASH = _HASHER.hash("0" * 32)


class UsernameTaken(Conflict):
    code = "username_taken"


class LoginRefused(DomainError):
    """Wrong user name or password, or an account that may not log in (answered 401)."""

    code = "login_failed"


LOGIN_VENDOR_STATES = frozenset({VendorState.ACTIVE, VendorState.INACTIVE})


class AccountState(IntEnum):
    DISABLED = 0
    ACTIVE = 2


class AdminAccount(Model):
    """A console login. Its role decides which of vendor/agent must be set."""

    id = fields.IntField(primary_key=True)
    username = fields.CharField(max_length=64, unique=True)
    password_hash = fields.CharField(max_length=255)
    role = fields.CharEnumField(Role, max_length=16)
    vendor: fields.ForeignKeyNullableRelation[Vendor] = fields.ForeignKeyField(
        "models.Vendor", related_name="accounts", null=True, on_delete=fields.RESTRICT
    )
    agent: fields.ForeignKeyNullableRelation[Agent] = fields.ForeignKeyField(
        "models.Agent", related_name="accounts", null=True, on_delete=fields.RESTRICT
    )
    state = fields.IntEnumField(AccountState, default=AccountState.ACTIVE)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    last_login_at = fields.DatetimeField(null=True)

    vendor_id: str | None
    agent_id: int | None

    class Meta:
        table = "admin_account"


def check_username(username: str) -> str:
    if not USERNAME_RE.match(username):
        raise InvalidInput(
            "user name must be 3-64 characters: letters, digits and _ . @ - "
            "(starting with a letter or digit)"
        )
    return username


def normalise_md5(password_md5: str) -> str:
    """The client's MD5 (32 hex digits, any case) in lower case; InvalidInput otherwise."""
    if not MD5_HEX_RE.match(password_md5):
        raise InvalidInput("password must be the MD5 of the password: 32 hex digits")
    return password_md5.lower()


async def hash_password(password_md5: str) -> str:
    """An Argon2id hash of the client's MD5 (computed in a worker thread)."""
    md5 = normalise_md5(password_md5)
    return await asyncio.to_thread(_HASHER.hash, md5)


async def verify_password(stored_hash: str | None, password_md5: str) -> bool:
    """True when the MD5 matches; as slow for a missing account (stored_hash None)."""
    if not MD5_HEX_RE.match(password_md5):
        return False
    candidate = password_md5.lower()
    return await asyncio.to_thread(_verify, stored_hash, candidate)


def _verify(stored_hash: str | None, candidate: str) -> bool:
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, candidate) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# ----------------------------------------------------------------------------- services


async def create_account(
    username: str,
    password_md5: str,
    role: Role,
    *,
    vendor_code: str | None = None,
    agent_id: int | None = None,
) -> AdminAccount:
    """A new admin account; UsernameTaken when the name is in use (any case)."""
    check_username(username)
    if role is Role.MEMBER:
        raise InvalidInput("members are not admin accounts")
    if (role is Role.PLATFORM) != (vendor_code is None):
        raise InvalidInput("every account but the platform's belongs to a vendor")
    if role in (Role.AGENT, Role.DEALER) and agent_id is None:
        raise InvalidInput("agent and dealer accounts belong to an agent node")
    if role not in (Role.AGENT, Role.DEALER, Role.TECHNICIAN) and agent_id is not None:
        raise InvalidInput("only agent, dealer and technician accounts belong to an agent node")
    password_hash = await hash_password(password_md5)
    if await AdminAccount.filter(username__iexact=username).exists():
        raise UsernameTaken(f"user name {username!r} is taken")
    try:
        return await AdminAccount.create(
            username=username,
            password_hash=password_hash,
            role=role,
            vendor_id=vendor_code,
            agent_id=agent_id,
        )
    except IntegrityError:
        raise UsernameTaken(f"user name {username!r} is taken") from None


async def set_password(account: AdminAccount, password_md5: str) -> None:
    account.password_hash = await hash_password(password_md5)
    await account.save(update_fields=["password_hash", "updated_at"])


async def admin_principal(account: AdminAccount) -> Principal | None:
    """The principal an account logs in as; None when it, its vendor or a node above it is
    disabled or deregistered."""
    if account.state is not AccountState.ACTIVE:
        return None
    role = Role(account.role)
    subject = str(account.id)
    if role is Role.PLATFORM:
        return Principal(role, subject)
    vendor = await Vendor.get_or_none(code=account.vendor_id)
    if vendor is None or vendor.state not in LOGIN_VENDOR_STATES:
        return None
    if role is Role.VENDOR or (role is Role.TECHNICIAN and account.agent_id is None):
        return Principal(role, subject, vendor_code=vendor.code)
    agent = await Agent.get_or_none(id=account.agent_id)
    if agent is None or agent.vendor_id != vendor.code:
        return None
    ids = path_ids(agent.path)
    active = (
        await Agent.filter(id__in=ids, vendor_id=vendor.code)
        .exclude(state=AgentState.DISABLED)
        .count()
    )
    if active != len(ids):
        return None
    return Principal(role, subject, vendor_code=vendor.code, agent_path=agent.path)


async def login_admin(username: str, password_md5: str) -> tuple[AdminAccount, Principal]:
    """Check an admin login; LoginRefused with the same message for a wrong name or password."""
    account = await AdminAccount.get_or_none(username__iexact=username)
    ok = await verify_password(account.password_hash if account else None, password_md5)
    if account is None or not ok:
        raise LoginRefused("user name or password is wrong")
    principal = await admin_principal(account)
    if principal is None:
        raise LoginRefused("the account is disabled")
    account.last_login_at = dt.datetime.now(dt.UTC)
    await account.save(update_fields=["last_login_at"])
    return account, principal


async def reload_admin(principal: Principal) -> Principal | None:
    """The current principal of an admin session (tokens refresh through this)."""
    if not principal.subject.isdigit():
        return None
    account = await AdminAccount.get_or_none(id=int(principal.subject))
    if account is None or account.role != principal.role:
        return None
    return await admin_principal(account)


async def rename_account(account: AdminAccount, username: str) -> None:
    """Give an account another user name; UsernameTaken when another account has it."""
    check_username(username)
    if username == account.username:
        return
    others = AdminAccount.filter(username__iexact=username).exclude(id=account.id)
    if await others.exists():
        raise UsernameTaken(f"user name {username!r} is taken")
    account.username = username
    try:
        await account.save(update_fields=["username", "updated_at"])
    except IntegrityError:
        raise UsernameTaken(f"user name {username!r} is taken") from None
