"""Signing test tokens: a key pair and a token factory, for the tests and the abuse benchmark."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TokenFactory = Callable[..., str]


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem_of(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def key_signer(key: rsa.RSAPrivateKey) -> TokenFactory:
    """``sign("alice", admin=True, email="a@example.com", exp_in=60, **extra_claims)``: RS256."""

    def sign(
        sub: str | None,
        *,
        admin: bool = False,
        email: str | None = None,
        exp_in: int = 3600,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iat": now, "exp": now + exp_in}
        if sub is not None:
            payload["sub"] = sub
        if admin:
            payload["role"] = "admin"
        if email:
            payload["email"] = email
        payload.update(claims)
        return jwt.encode(payload, key, algorithm="RS256")

    return sign
