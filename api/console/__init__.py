"""The agent console: a static single-page app at ``/console`` for the support team.

It is plain files from this package (``static/``), read once when the app is built: no build
step, no CDN, nothing fetched at run time. The console talks only to the existing JSON API with
the agent's bearer token, so these routes add no new way in: they serve files and need no token
(like ``/schema``), and they sit outside the guarded ticket router (api/app.py).

Every console response carries a Content-Security-Policy that allows scripts, styles and
requests from this origin only and no inline script or style, so text from users can never run
even if it reached the page as markup (the console also only ever sets it as text).

In development only (``APP_ENV=development`` with no real key configured) the console can ask
``POST /console/dev-token`` for a short-lived admin token signed with the development key, the
same key ``helpdesk token`` signs with. In production that route does not exist.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from litestar import Request, Response, Router, get, post
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_304_NOT_MODIFIED

from domain.devkey import ensure_dev_keypair
from domain.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
PATH = "/console"

# Lifetime of a development agent's token: long enough to work a queue for a while, short enough
# that a copied one is soon useless. The console signs the agent out when it expires.
DEV_TOKEN_TTL_S = 3600
DEV_AGENT_ID = "dev-agent"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Small files, revalidated on every load (a 304 costs a hash lookup): an upgraded server is
# never run with yesterday's script from the browser's cache.
CACHE_CONTROL = "no-cache"
NO_STORE = "no-store"  # a minted token is never cached

# Litestar adds "; charset=utf-8" to text/* types itself.
MEDIA_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str


def load_static(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every servable file of ``directory`` by name (no subdirectories, known types only)."""
    files = {}
    for path in sorted(directory.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media_type:
            body = path.read_bytes()
            digest = hashlib.sha256(body).hexdigest()[:20]
            files[path.name] = StaticFile(body, media_type, f'"{digest}"')
    return files


def _serve(file: StaticFile, request: Request[Any, Any, Any]) -> Response[bytes]:
    headers = {**SECURITY_HEADERS, "Cache-Control": CACHE_CONTROL, "ETag": file.etag}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


def dev_sign_in_enabled(settings: Settings) -> bool:
    """The development agent's button works only where the API trusts the development key."""
    return settings.is_development and not (settings.jwt_public_key or settings.jwt_jwks_url)


def mint_dev_token(settings: Settings, *, now: float | None = None) -> tuple[str, int]:
    """A development agent's admin token and its expiry (seconds since the epoch)."""
    private_pem, _ = ensure_dev_keypair()
    issued = int(now if now is not None else time.time())
    expires = issued + DEV_TOKEN_TTL_S
    claims: dict[str, object] = {
        "sub": DEV_AGENT_ID,
        "role": settings.jwt_admin_role,
        "iat": issued,
        "exp": expires,
    }
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, private_pem, algorithm="RS256"), expires


def console_router(settings: Settings) -> Router:
    """The console's routes; ``POST /console/dev-token`` only when dev sign-in is enabled."""
    files = load_static()
    dev_sign_in = dev_sign_in_enabled(settings)
    config = {"dev_sign_in": dev_sign_in}

    @get(["/", "/index.html"], include_in_schema=False, sync_to_thread=False)
    def index(request: Request[Any, Any, Any]) -> Response[bytes]:
        return _serve(files["index.html"], request)

    @get("/assets/{name:str}", include_in_schema=False, sync_to_thread=False)
    def asset(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        file = files.get(name)
        if file is None or name == "index.html":
            # The API's own 404 (its JSON error shape), as for any other unknown path.
            raise NotFoundException(f"no console file {name!r}")
        return _serve(file, request)

    @get("/config.json", include_in_schema=False, sync_to_thread=False)
    def console_config() -> Response[dict[str, bool]]:
        headers = {**SECURITY_HEADERS, "Cache-Control": NO_STORE}
        return Response(config, headers=headers)

    handlers: list[HTTPRouteHandler] = [index, asset, console_config]
    if dev_sign_in:

        @post("/dev-token", include_in_schema=False, status_code=HTTP_200_OK)
        async def dev_token() -> Response[dict[str, object]]:
            token, expires = mint_dev_token(settings)
            headers = {**SECURITY_HEADERS, "Cache-Control": NO_STORE}
            body: dict[str, object] = {"token": token, "expires_at": expires, "sub": DEV_AGENT_ID}
            return Response(body, headers=headers)

        handlers.append(dev_token)
    return Router(path=PATH, route_handlers=handlers, include_in_schema=False)
