"""The operator console: a browser client of /api/v1, served under /console by this app.

Only static files are served here: `/console` answers the page (no-store, with the strict
Content-Security-Policy below), and `/console/static/<hash>/<file>` the ES modules, styles and
licences of `api/console/`, where <hash> is the SHA-256 of every file's name and content: a
new release is a new URL, so browsers may keep each version for a year (immutable). Nothing is
fetched from another origin: no CDN, no fonts, no tiles unless `console_tile_url` is set.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from aquafleet.gateway.appkeys import SETTINGS

CONSOLE_PATH = "/console"
ASSETS_DIR = Path(__file__).with_name("console")
ASSET_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class Assets:
    """The console's files by path relative to ASSETS_DIR, and the hash naming this set."""

    files: dict[str, bytes]
    digest: str

    @property
    def prefix(self) -> str:
        return f"{CONSOLE_PATH}/static/{self.digest}"


ASSETS: web.AppKey[Assets] = web.AppKey("console_assets", Assets)


def load_assets(directory: Path = ASSETS_DIR) -> Assets:
    files = {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix in ASSET_TYPES
    }
    digest = hashlib.sha256()
    for name, content in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return Assets(files, digest.hexdigest()[:16])


def content_security_policy(tile_url: str | None) -> str:
    """Scripts, styles and connections to this origin only; no inline script or style, no
    plugin, no framing; images also from the map's tile server when one is configured."""
    images = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url.replace("{", "").replace("}", ""))
        images += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; font-src 'self'; manifest-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )


def security_headers(tile_url: str | None) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(tile_url),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="aq-tile-url" content="{tile_url}">
<title>aquafleet console</title>
<link rel="stylesheet" href="{prefix}/app.css">
<link rel="icon" href="{prefix}/icon.svg">
<script type="module" src="{prefix}/app.js"></script>
</head>
<body>
<noscript>The aquafleet console needs JavaScript.</noscript>
<div id="app"></div>
</body>
</html>
"""


async def console_page(request: web.Request) -> web.Response:
    """The page: references the assets of this release by their hash."""
    tile_url = request.app[SETTINGS].console_tile_url
    text = PAGE.format(
        prefix=request.app[ASSETS].prefix, tile_url=html.escape(tile_url or "", quote=True)
    )
    headers = security_headers(tile_url)
    headers["Cache-Control"] = "no-store"
    return web.Response(text=text, content_type="text/html", headers=headers)


async def console_redirect(request: web.Request) -> web.Response:
    return web.Response(status=301, headers={"Location": f"{CONSOLE_PATH}/"})


async def console_asset(request: web.Request) -> web.Response:
    assets = request.app[ASSETS]
    name = request.match_info["name"]
    content = assets.files.get(name)
    if request.match_info["digest"] != assets.digest or content is None:
        raise web.HTTPNotFound()  # another release's file: the page is reloaded with this one's
    kind = ASSET_TYPES[Path(name).suffix]  # load_assets keeps only these suffixes
    headers = security_headers(request.app[SETTINGS].console_tile_url)
    headers["Cache-Control"] = IMMUTABLE
    return web.Response(body=content, content_type=kind, charset="utf-8", headers=headers)


def setup_console(app: web.Application) -> None:
    app[ASSETS] = load_assets()
    app.router.add_get(CONSOLE_PATH, console_redirect)
    app.router.add_get(f"{CONSOLE_PATH}/", console_page)
    app.router.add_get(CONSOLE_PATH + "/static/{digest:[0-9a-f]{16}}/{name:.+}", console_asset)
