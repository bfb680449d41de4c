"""`aquafleet vendors ...` and `aquafleet admin ...`: vendors and the admin accounts that log in
to the API (`POST /api/v1/auth/login`). Passwords come from a prompt, stdin or a file, never
from the command line (where `ps` and the shell history would show them)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from aquafleet.commands.output import add_json_flag, emit
from aquafleet.commands.runtime import command_settings, run_with_database
from aquafleet.gateway.errors import GatewayError

MIN_PASSWORD = 8


def read_new_password(args: argparse.Namespace) -> str:
    """The password from --password-file, a prompt on a terminal, or the first line of stdin."""
    import getpass

    if getattr(args, "password_file", None) is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"cannot read {args.password_file}: {exc.strerror}") from None
        password = text.splitlines()[0] if text else ""
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise GatewayError("the passwords differ")
    else:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise GatewayError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def client_md5(password: str) -> str:
    """What a client sends as `pwd`: the hex MD5 of the password (the seed's rule)."""
    return hashlib.md5(password.encode()).hexdigest()


def _account_line(kind: str, data: dict[str, Any]) -> str:
    return f"{kind} {data['user']} created (id {data['id']}); it logs in at POST /api/v1/auth/login"


def cmd_vendors_add(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.registry import create_vendor
    from aquafleet.models.vendors import register_vendor

    password_md5 = client_md5(read_new_password(args)) if args.admin else None

    async def action() -> int:
        if args.admin is None:
            vendor = await create_vendor(args.code, args.name)
        else:
            assert password_md5 is not None
            vendor = await register_vendor(
                {"name": args.name.strip()}, args.admin, password_md5, code=args.code
            )
        data: dict[str, Any] = {"code": vendor.code, "name": vendor.name, "admin": args.admin}
        text = f"vendor {vendor.code} ({vendor.name}) created"
        if args.admin is None:
            text += (
                f"\nit has no admin account yet: aquafleet vendors add-admin {vendor.code} "
                "--user NAME"
            )
        else:
            text += f", admin {args.admin} (logs in at POST /api/v1/auth/login)"
        emit(args, data, lambda _: text)
        return 0

    return run_with_database(settings, action)


def cmd_vendors_add_admin(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.accounts import create_account
    from aquafleet.models.errors import NotFound
    from aquafleet.models.tenancy import Role
    from aquafleet.models.vendors import Vendor

    password_md5 = client_md5(read_new_password(args))

    async def action() -> int:
        if not await Vendor.exists(code=args.code):
            raise NotFound(f"vendor {args.code} does not exist")
        account = await create_account(args.user, password_md5, Role.VENDOR, vendor_code=args.code)
        data = {"id": account.id, "user": account.username, "vendor": args.code, "role": "vendor"}
        emit(args, data, lambda d: _account_line(f"vendor {args.code} admin", d))
        return 0

    return run_with_database(settings, action)


def cmd_admin_create_platform(args: argparse.Namespace) -> int:
    settings = command_settings(args)
    from aquafleet.models.accounts import create_account
    from aquafleet.models.tenancy import Role

    # Clients send the MD5 of the password (the seed); the account stores a hash of that.
    password_md5 = client_md5(read_new_password(args))

    async def action() -> int:
        account = await create_account(args.user, password_md5, Role.PLATFORM)
        data = {"id": account.id, "user": account.username, "role": "platform"}
        emit(args, data, lambda d: _account_line("platform admin", d))
        return 0

    return run_with_database(settings, action)


def _password_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file", type=Path, help="file whose first line is the password "
        "(else a prompt on a terminal, or the first line of stdin)",
    )  # fmt: skip


def add_parsers(commands: Any) -> None:
    vendors = commands.add_parser("vendors", help="manage vendors (brands) and their admins")
    vendor_commands = vendors.add_subparsers(dest="vendors_command", required=True)
    add = vendor_commands.add_parser(
        "add", help="create a vendor (and its admin account with --admin)", allow_abbrev=False
    )
    add.add_argument("code", help="4 characters A-Z/0-9, the prefix of its ids")
    add.add_argument("--name", required=True, help="the brand's name, as the console shows it")
    add.add_argument(
        "--admin", metavar="USER", help="also create the vendor's admin account, USER "
        "(password from a prompt, stdin or --password-file)",
    )  # fmt: skip
    _password_options(add)
    add_json_flag(add)
    add.set_defaults(func=cmd_vendors_add)
    add_admin = vendor_commands.add_parser(
        "add-admin",
        help="create an admin account (role vendor) for an existing vendor",
        allow_abbrev=False,  # `--password X` must not pass for `--password-file X`
    )
    add_admin.add_argument("code", help="the vendor's code")
    add_admin.add_argument("--user", required=True, help="user name (3-64 characters)")
    _password_options(add_admin)
    add_json_flag(add_admin)
    add_admin.set_defaults(func=cmd_vendors_add_admin)

    admin = commands.add_parser("admin", help="manage admin accounts")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    create_platform = admin_commands.add_parser(
        "create-platform-admin",
        help="create a platform admin account (password from a prompt, stdin or "
        "--password-file); it logs in with the password's MD5, see README",
        allow_abbrev=False,
    )
    create_platform.add_argument("--user", required=True, help="user name (3-64 characters)")
    _password_options(create_platform)
    add_json_flag(create_platform)
    create_platform.set_defaults(func=cmd_admin_create_platform)
