"""Bearer-token verification (PyJWT). We only verify tokens; the identity service issues them."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
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

# Verified tokens are remembered, keyed by the exact token string, so a client's repeated
# requests skip the signature check (an RS256 check ~50-120 us, a hit ~1 us). Bounded, least
# recently used evicted first; an entry lives until the token's exp and never longer than
# CACHE_MAX_AGE_S, so a key dropped from the JWKS stops being honoured within that time.
CACHE_SIZE = 10_000
CACHE_MAX_AGE_S = 300.0


class InvalidToken(Exception):
    """The token is missing, malformed, expired or not signed by a trusted key. ``reason`` is
    one of a few fixed words (the auth-failure metric's label): missing, malformed, expired,
    bad_signature, invalid_claims."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


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
        self._verified = VerifiedTokenCache(CACHE_SIZE, CACHE_MAX_AGE_S)
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
            raise InvalidToken(
                "token missing or too large", reason="missing" if not token else "malformed"
            )
        # Only a byte-identical token that passed every check below is found here: a tampered
        # token is another key, and a refused token is never stored.
        caller = self._verified.get(token)
        if caller is None:
            caller, exp = self._verify_signed(token)
            self._verified.put(token, caller, exp)
        return caller

    def _verify_signed(self, token: str) -> tuple[Caller, float]:
        """Check signature and claims; the caller and the token's exp (seconds since epoch)."""
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
                raise InvalidToken(str(exc), reason=_reason(exc)) from exc
        if claims is None:
            raise InvalidToken(
                str(error or "signature verification failed"), reason="bad_signature"
            )
        # "require" made PyJWT check that exp is there and numeric.
        return self._caller(claims), float(claims["exp"])

    def _caller(self, claims: dict[str, Any]) -> Caller:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > 255 or "\x00" in sub:
            raise InvalidToken(
                "sub must be a non-empty string of at most 255 characters", reason="invalid_claims"
            )
        roles = claims.get("roles")
        is_admin = claims.get("role") == self.admin_role or (
            isinstance(roles, list) and self.admin_role in roles
        )
        email = claims.get("email")
        if not (isinstance(email, str) and len(email) <= 320 and _EMAIL.match(email)):
            email = None
        return Caller(user_id=sub, is_admin=is_admin, email=email)


class VerifiedTokenCache:
    """Callers of tokens that passed verification, until their exp (never beyond), LRU-bounded.

    Entries are checked against the wall clock, like PyJWT checks exp. Used from the event loop
    thread only (the guard runs there), so it needs no lock.
    """

    def __init__(self, size: int, max_age_s: float, clock: Any = time.time) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Caller | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        caller, valid_until = entry
        if self._clock() >= valid_until:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return caller

    def put(self, token: str, caller: Caller, exp: float) -> None:
        valid_until = min(exp, self._clock() + self.max_age_s)
        if valid_until <= self._clock():
            return  # accepted within the leeway only: verify it again next time
        self._entries[token] = (caller, valid_until)
        self._entries.move_to_end(token)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _public_key(pem: bytes) -> Any:
    """Parsed once at start-up: handing PyJWT the PEM text made it parse the key again on every
    request (about a third of a token check)."""
    try:
        return serialization.load_pem_public_key(pem)
    except ValueError as exc:
        detail = f"JWT_PUBLIC_KEY has a PEM block that is not a public key: {exc}"
        raise ConfigError(detail) from exc


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(error, jwt.InvalidSignatureError):
        return "bad_signature"
    if isinstance(error, jwt.DecodeError):  # not a JWT at all, or an unreadable one
        return "malformed"
    return "invalid_claims"  # audience, issuer, not yet valid, a required claim missing


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise InvalidToken("missing Authorization header", reason="missing")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("Authorization header must be 'Bearer <token>'")
    return token.strip()
