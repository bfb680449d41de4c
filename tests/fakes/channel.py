"""What the payment channels' fakes share (and none of it aquafleet's code): RSA PKCS#1 v1.5
signatures in base64, and serving an aiohttp app on loopback with a client session for the
notifications the fake posts."""

from __future__ import annotations

import base64

import aiohttp
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def rsa_sign(private_pem: str, text: str, algorithm: hashes.HashAlgorithm) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return base64.b64encode(key.sign(text.encode(), padding.PKCS1v15(), algorithm)).decode()


def rsa_verify(public_pem: str, text: str, signature: str, algorithm: hashes.HashAlgorithm) -> bool:
    key = serialization.load_pem_public_key(public_pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    try:
        key.verify(base64.b64decode(signature), text.encode(), padding.PKCS1v15(), algorithm)
    except (InvalidSignature, ValueError):
        return False
    return True


async def serve(
    app: web.Application, port: int
) -> tuple[web.AppRunner, str, aiohttp.ClientSession]:
    """`app` on 127.0.0.1:`port` (0: any free port): its runner, its URL, and a session to
    post notifications with."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    return runner, f"http://127.0.0.1:{bound}", session


async def stop_serving(runner: web.AppRunner | None, session: aiohttp.ClientSession | None) -> None:
    if session is not None:
        await session.close()
    if runner is not None:
        await runner.cleanup()
