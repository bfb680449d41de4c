"""The rows a money posting locks before it decides on balances (models/money.py), and the one
order every transaction locks them in: by name, in one call, or in calls whose new names all
sort after those before (`lock_accounts`). Two transactions that took the same accounts in
opposite orders could each hold what the other waits for: a deadlock on PostgreSQL."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from tortoise import connections, fields
from tortoise.backends.base.client import TransactionalDBClient
from tortoise.models import Model

MAX_ACCOUNT = 96


class MoneyAccount(Model):
    """A row per guarded account, locked while a posting checks its balance, so that two
    concurrent spends from one wallet cannot both pass the check (PostgreSQL's row lock;
    SQLite serialises write transactions)."""

    name = fields.CharField(max_length=MAX_ACCOUNT, primary_key=True)

    class Meta:
        table = "money_account"


# The accounts each open transaction (its connection) holds locked, for `lock_accounts`'s
# order guard; weak, so an entry goes with its transaction.
_HELD: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


class AccountLockOrder(AssertionError):
    """A transaction asked to lock an account sorting before one it holds already: two such
    transactions can each hold what the other waits for (a deadlock on PostgreSQL). A
    transaction locks every account it decides on in one call (`lock_accounts`), or in
    calls whose new names all sort after the ones before."""


async def lock_accounts(names: Iterable[str]) -> None:
    """Lock the accounts' rows (made when missing) in name order before reading balances, so
    what this transaction writes was decided on balances nobody else changes meanwhile.
    Within one transaction every lock is taken in one global order, by name: a later call may
    repeat held names or add names sorting after all of them, never one before
    (AccountLockOrder), which guards the order every caller keeps."""
    ordered = sorted(set(names))
    if not ordered:
        return
    connection = connections.get("default")
    in_txn = isinstance(connection, TransactionalDBClient)
    held = _HELD.get(connection, frozenset()) if in_txn else frozenset()
    new = [n for n in ordered if n not in held]
    if held and new and new[0] < max(held):
        raise AccountLockOrder(
            f"locking {new[0]} after {max(held)} in one transaction: lock the accounts in one "
            "call, in name order"
        )
    await MoneyAccount.bulk_create([MoneyAccount(name=n) for n in new], ignore_conflicts=True)
    await MoneyAccount.filter(name__in=ordered).select_for_update().order_by("name")
    if in_txn:
        _HELD[connection] = held | frozenset(new)
