"""The verified-token cache: a repeated token skips the signature check, but never outlives its
exp, never grows past its bound, and never answers for a token that was not verified itself."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

import jwt
import pytest

from api import auth
from api.auth import InvalidToken, TokenVerifier, VerifiedTokenCache
from domain.settings import Settings, load_settings
from domain.tickets import Caller
from tests.conftest import TokenFactory


@pytest.fixture
def key_settings(public_pem: str) -> Settings:
    return replace(load_settings({"APP_ENV": "production"}), jwt_public_key=public_pem)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT is asked to verify (a signature check each)."""
    seen: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(auth.jwt, "decode", counting)
    return seen


def _exp_of(token: str) -> float:
    payload = token.split(".")[1]
    exp: float = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    return exp


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_token_is_verified_once_and_gives_the_same_caller(
    key_settings: Settings, make_token: TokenFactory, decodes: list[str]
) -> None:
    verifier = TokenVerifier(key_settings)
    token = make_token("alice", admin=True, email="alice@example.com")
    first = verifier.verify(token)
    assert first == Caller(user_id="alice", is_admin=True, email="alice@example.com")
    assert all(verifier.verify(token) is first for _ in range(5))
    assert decodes == [token]
    # Another token of the same user is a token of its own.
    verifier.verify(make_token("alice", exp_in=7200))
    assert len(decodes) == 2


def test_a_tampered_copy_of_a_cached_token_is_checked_and_refused(
    key_settings: Settings, make_token: TokenFactory, decodes: list[str]
) -> None:
    verifier = TokenVerifier(key_settings)
    token = make_token("mallory")
    verifier.verify(token)
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify(tampered)
    assert decodes == [token, tampered, tampered]  # refused tokens are never remembered


def test_a_cached_token_is_refused_once_it_expires(
    key_settings: Settings, make_token: TokenFactory, decodes: list[str]
) -> None:
    verifier = TokenVerifier(replace(key_settings, jwt_leeway_s=0))
    token = make_token("alice", exp_in=2)
    assert verifier.verify(token).user_id == "alice"
    assert verifier.verify(token).user_id == "alice"
    assert decodes == [token]
    time.sleep(max(0.0, _exp_of(token) - time.time()) + 0.1)
    with pytest.raises(InvalidToken, match="expired"):
        verifier.verify(token)
    assert decodes == [token, token]


def test_a_token_accepted_within_the_leeway_is_not_remembered(
    key_settings: Settings, make_token: TokenFactory, decodes: list[str]
) -> None:
    verifier = TokenVerifier(key_settings)
    token = make_token("alice", exp_in=-5)  # past exp, inside the 30 s leeway
    verifier.verify(token)
    verifier.verify(token)
    assert decodes == [token, token]


def test_entries_live_until_exp_and_at_most_the_maximum_age() -> None:
    clock = Clock()
    cache = VerifiedTokenCache(10, max_age_s=300, clock=clock)
    alice, bob = Caller("alice"), Caller("bob")
    cache.put("a", alice, exp=clock.now + 60)
    cache.put("b", bob, exp=clock.now + 3600)
    clock.now += 59.9
    assert cache.get("a") is alice
    clock.now += 0.1
    assert cache.get("a") is None  # exp reached
    assert cache.get("b") is bob
    clock.now += 240
    assert cache.get("b") is None  # five minutes, although exp is an hour away
    assert len(cache) == 0
    cache.put("c", alice, exp=clock.now)  # already expired: not stored
    assert len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_within_its_bound() -> None:
    clock = Clock()
    cache = VerifiedTokenCache(3, max_age_s=300, clock=clock)
    callers = {name: Caller(name) for name in "abcd"}
    for name in "abc":
        cache.put(name, callers[name], exp=clock.now + 60)
    assert cache.get("a") is callers["a"]  # now b is the least recently used
    cache.put("d", callers["d"], exp=clock.now + 60)
    assert len(cache) == 3
    assert cache.get("b") is None
    assert [cache.get(name) for name in "acd"] == [callers[n] for n in "acd"]


def test_the_verifier_cache_is_bounded(
    key_settings: Settings, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "CACHE_SIZE", 5)
    verifier = TokenVerifier(key_settings)
    for i in range(20):
        verifier.verify(make_token(f"user-{i}"))
    assert len(verifier._verified) == 5
