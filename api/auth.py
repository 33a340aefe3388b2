"""Bearer-token verification (PyJWT). We only verify tokens; the identity service issues them."""

from __future__ import annotations

import re
from typing import Any

import jwt
import structlog
from cryptography.hazmat.primitives import serialization

from domain.devkey import ensure_dev_keypair
from domain.settings import ConfigError, Settings
from domain.tickets import Caller

log = structlog.get_logger(__name__)

MAX_TOKEN_BYTES = 8192
_HMAC = frozenset({"HS256", "HS384", "HS512"})
_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)
# An email we would put in a mail header: no CR/LF, one @, bounded.
_EMAIL = re.compile(r"^[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,255}$")


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by a trusted key."""


class TokenVerifier:
    """Verifies bearer tokens with the configured keys; turns their claims into a :class:`Caller`.

    Keys come from ``JWT_JWKS_URL``, else ``JWT_PUBLIC_KEY``/``JWT_PUBLIC_KEY_FILE`` (one or more
    PEM blocks, tried in order, so keys can be rotated), else, in development only, the
    development key pair that ``helpdesk token`` signs with.
    """

    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        if _HMAC.intersection(self.algorithms) and not _HMAC.issuperset(self.algorithms):
            raise ConfigError(
                "JWT_ALGORITHMS mixes HMAC (HS*) and public-key algorithms; that allows key "
                "confusion. Configure one family only."
            )
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.admin_role = settings.jwt_admin_role
        self.leeway = settings.jwt_leeway_s
        self._jwks: jwt.PyJWKClient | None = None
        self._keys: list[Any] = []
        if settings.jwt_jwks_url:
            self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300)
        elif settings.jwt_public_key:
            if _HMAC.issuperset(self.algorithms):
                self._keys = [settings.jwt_public_key.encode()]
            else:
                blocks = _PEM_BLOCK.findall(settings.jwt_public_key)
                if not blocks:
                    raise ConfigError("JWT_PUBLIC_KEY does not contain a PEM public key")
                self._keys = [_public_key(block.encode()) for block in blocks]
        elif settings.is_development:
            _, public_pem = ensure_dev_keypair()
            self._keys = [_public_key(public_pem)]
            log.warning("auth.development_key", detail="accepting tokens from the local dev key")
        else:
            raise ConfigError(
                "No token verification key configured: set JWT_PUBLIC_KEY (PEM), "
                "JWT_PUBLIC_KEY_FILE (path to a PEM file) or JWT_JWKS_URL. "
                "For local development set APP_ENV=development to use the dev key."
            )

    def verify(self, token: str) -> Caller:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token missing or too large")
        keys = [self._jwks.get_signing_key_from_jwt(token).key] if self._jwks else self._keys
        claims: dict[str, Any] | None = None
        error: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=self.algorithms,
                    issuer=self.issuer,
                    audience=self.audience,
                    leeway=self.leeway,
                    options={
                        "require": ["exp", "sub"],
                        "verify_aud": self.audience is not None,
                        "verify_iss": self.issuer is not None,
                    },
                )
                break
            except jwt.InvalidSignatureError as exc:
                error = exc  # maybe signed by the next (rotated) key
            except jwt.PyJWTError as exc:
                raise InvalidToken(str(exc)) from exc
        if claims is None:
            raise InvalidToken(str(error or "signature verification failed"))
        return self._caller(claims)

    def _caller(self, claims: dict[str, Any]) -> Caller:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > 255 or "\x00" in sub:
            raise InvalidToken("sub must be a non-empty string of at most 255 characters")
        roles = claims.get("roles")
        is_admin = claims.get("role") == self.admin_role or (
            isinstance(roles, list) and self.admin_role in roles
        )
        email = claims.get("email")
        if not (isinstance(email, str) and len(email) <= 320 and _EMAIL.match(email)):
            email = None
        return Caller(user_id=sub, is_admin=is_admin, email=email)


def _public_key(pem: bytes) -> Any:
    """Parsed once at start-up: handing PyJWT the PEM text made it parse the key again on every
    request (about a third of a token check)."""
    try:
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        detail = f"JWT_PUBLIC_KEY has a PEM block that is not a public key: {exc}"
        raise ConfigError(detail) from exc


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Authorization header must be 'Bearer <token>'")
    return token.strip()
