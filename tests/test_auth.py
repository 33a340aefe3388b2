"""Bearer-token verification: the attack set, admin roles, key rotation and configuration."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.cli import main as cli_main
from domain.settings import ConfigError, Settings
from tests.conftest import (
    ADMIN_URL,
    MISSING_ID,
    USER_URL,
    RecordingPublisher,
    TokenFactory,
    auth,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(sub: str | None = "mallory", exp_in: int | None = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {"iat": now, **extra}
    if sub is not None:
        payload["sub"] = sub
    if exp_in is not None:
        payload["exp"] = now + exp_in
    return payload


def hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token made by hand (PyJWT refuses to use a PEM key as an HMAC secret)."""
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


ClientFactory = Callable[[Settings], Any]


@pytest.fixture
def app_with(publisher: RecordingPublisher) -> ClientFactory:
    """``async with app_with(settings) as client``: the API built from other settings."""

    @asynccontextmanager
    async def build(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
        async with AsyncTestClient(app=create_app(settings, publisher=publisher)) as client:
            yield client

    return build


def assert_401(response: Any, case: str) -> None:
    assert response.status_code == 401, (case, response.status_code, response.text)
    assert response.headers.get("www-authenticate", "").startswith("Bearer"), case
    body = response.json()
    assert body["success"] is False, case
    assert body["error"]["code"] == "unauthorized", case


def attack_set(
    make_token: TokenFactory,
    rsa_private_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    public_pem: str,
) -> dict[str, dict[str, str]]:
    """Each entry: the headers of a request that must be refused with 401."""
    good = make_token("mallory", admin=True)
    header, payload, signature = good.split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"
    forged_payload = segment({**claims(), "sub": "victim", "role": "admin"})
    padding = "x" * 20_000
    tokens = {
        "alg none": f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims(role='admin'))}.",
        "alg None spelled oddly": f"{segment({'alg': 'None'})}.{segment(claims())}.",
        "HS256 signed with the public key PEM": hs256(claims(role="admin"), public_pem.encode()),
        "HS256 signed with the PEM, no newline": hs256(claims(), public_pem.strip().encode()),
        "expired": make_token("mallory", exp_in=-3600),
        "not yet valid": make_token("mallory", nbf=int(time.time()) + 3600),
        "tampered signature": tampered,
        "signature stripped": f"{header}.{payload}.",
        "payload swapped, signature kept": f"{header}.{forged_payload}.{signature}",
        "signed by another key": jwt.encode(claims(role="admin"), other_key, algorithm="RS256"),
        "RS512 (not an accepted algorithm)": jwt.encode(claims(), rsa_private_key, "RS512"),
        "PS256 (not an accepted algorithm)": jwt.encode(claims(), rsa_private_key, "PS256"),
        "missing sub": make_token(None),
        "empty sub": make_token(""),
        "blank sub": make_token("   "),
        "numeric sub": jwt.encode({**claims(), "sub": 42}, rsa_private_key, "RS256"),
        "sub with NUL": make_token("mallory\x00admin"),
        "sub too long": make_token("u" * 256),
        "missing exp": jwt.encode(claims(exp_in=None), rsa_private_key, "RS256"),
        "exp not a number": jwt.encode({**claims(), "exp": "never"}, rsa_private_key, "RS256"),
        "20 kB token": make_token("mallory", padding=padding),
        "garbage": "not.a.jwt",
        "two segments": f"{header}.{payload}",
        "random bytes": b64url(bytes(range(256))),
    }
    requests = {name: auth(token) for name, token in tokens.items()}
    requests.update(
        {
            "no Authorization header": {},
            "empty Authorization header": {"Authorization": ""},
            "Basic scheme": {"Authorization": "Basic bWFsbG9yeTpodW50ZXIy"},
            "Token scheme": {"Authorization": f"Token {good}"},
            "no scheme": {"Authorization": good},
            "Bearer without a token": {"Authorization": "Bearer "},
            "Bearer twice": {"Authorization": f"Bearer Bearer {good}"},
        }
    )
    return requests


async def test_attack_set_is_refused_with_401_and_www_authenticate(
    client: AsyncTestClient[Any],
    make_token: TokenFactory,
    rsa_private_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    public_pem: str,
) -> None:
    attacks = attack_set(make_token, rsa_private_key, other_key, public_pem)
    assert len(attacks) >= 30
    for case, headers in attacks.items():
        assert_401(await client.get(USER_URL, headers=headers), case)
        assert_401(await client.get(ADMIN_URL, headers=headers), f"admin: {case}")
    # The same good token that the attacks were derived from is accepted (the set is meaningful).
    ok = await client.get(ADMIN_URL, headers=auth(make_token("mallory", admin=True)))
    assert ok.status_code == 200, ok.text


async def test_every_endpoint_needs_a_token(client: AsyncTestClient[Any]) -> None:
    endpoints: list[tuple[str, str, Any]] = [
        ("POST", USER_URL, {"subject": "s", "body": "b"}),
        ("GET", USER_URL, None),
        ("GET", f"{USER_URL}/{MISSING_ID}", None),
        ("POST", f"{USER_URL}/{MISSING_ID}/messages", {"body": "b"}),
        ("POST", f"{USER_URL}/{MISSING_ID}/close", None),
        ("GET", ADMIN_URL, None),
        ("GET", f"{ADMIN_URL}/{MISSING_ID}", None),
        ("PATCH", f"{ADMIN_URL}/{MISSING_ID}", {"status": "open"}),
        ("POST", f"{ADMIN_URL}/{MISSING_ID}/messages", {"body": "b"}),
    ]
    for method, url, payload in endpoints:
        assert_401(await client.request(method, url, json=payload), f"{method} {url}")


async def test_lowercase_bearer_scheme_is_accepted(
    client: AsyncTestClient[Any], make_token: TokenFactory
) -> None:
    response = await client.get(USER_URL, headers={"Authorization": f"bearer {make_token('u')}"})
    assert response.status_code == 200, response.text


async def test_token_within_the_leeway_is_accepted(
    client: AsyncTestClient[Any], make_token: TokenFactory, settings: Settings
) -> None:
    assert settings.jwt_leeway_s > 5
    response = await client.get(USER_URL, headers=auth(make_token("u", exp_in=-5)))
    assert response.status_code == 200, response.text


# -- issuer and audience --------------------------------------------------------------------------


async def test_issuer_and_audience_are_checked_when_configured(
    app_with: ClientFactory, settings: Settings, make_token: TokenFactory
) -> None:
    configured = replace(settings, jwt_issuer="https://id.example.com", jwt_audience="support-api")
    iss, aud = "https://id.example.com", "support-api"
    bad = {
        "no iss": make_token("u", aud=aud),
        "wrong iss": make_token("u", iss="https://evil.example.com", aud=aud),
        "no aud": make_token("u", iss=iss),
        "wrong aud": make_token("u", iss=iss, aud="billing-api"),
        "wrong aud in a list": make_token("u", iss=iss, aud=["billing-api", "other"]),
    }
    async with app_with(configured) as client:
        for case, token in bad.items():
            assert_401(await client.get(USER_URL, headers=auth(token)), case)
        good = await client.get(USER_URL, headers=auth(make_token("u", iss=iss, aud=aud)))
        assert good.status_code == 200, good.text
        listed = await client.get(
            USER_URL, headers=auth(make_token("u", iss=iss, aud=["other", aud]))
        )
        assert listed.status_code == 200, listed.text


async def test_iss_and_aud_are_ignored_when_not_configured(
    client: AsyncTestClient[Any], make_token: TokenFactory
) -> None:
    token = make_token("u", iss="https://anyone.example.com", aud="anything")
    response = await client.get(USER_URL, headers=auth(token))
    assert response.status_code == 200, response.text


# -- admin role -----------------------------------------------------------------------------------


async def test_admin_role_from_role_string_or_roles_list(
    client: AsyncTestClient[Any], make_token: TokenFactory
) -> None:
    admins = {
        "role string": make_token("a1", role="admin"),
        "roles list": make_token("a2", roles=["agent", "admin"]),
        "both": make_token("a3", role="admin", roles=["admin"]),
    }
    not_admins = {
        "no role": make_token("u1"),
        "other role": make_token("u2", role="user"),
        "role differs in case": make_token("u3", role="Admin"),
        "role contains admin": make_token("u4", role="administrator"),
        "roles list without admin": make_token("u5", roles=["user", "agent"]),
        "roles as a string containing admin": make_token("u6", roles="sysadmin"),
        "role as a list": make_token("u7", role=["admin"]),
        "roles holding a longer name": make_token("u8", roles=["admins"]),
    }
    for case, token in admins.items():
        response = await client.get(ADMIN_URL, headers=auth(token))
        assert response.status_code == 200, (case, response.text)
    for case, token in not_admins.items():
        response = await client.get(ADMIN_URL, headers=auth(token))
        assert response.status_code == 403, (case, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        # A non-admin is still a valid user.
        assert (await client.get(USER_URL, headers=auth(token))).status_code == 200


async def test_custom_admin_role(
    app_with: ClientFactory, settings: Settings, make_token: TokenFactory
) -> None:
    async with app_with(replace(settings, jwt_admin_role="support-agent")) as client:
        for token in (
            make_token("a", role="support-agent"),
            make_token("b", roles=["support-agent"]),
        ):
            response = await client.get(ADMIN_URL, headers=auth(token))
            assert response.status_code == 200, response.text
        default_admin = await client.get(ADMIN_URL, headers=auth(make_token("c", role="admin")))
        assert default_admin.status_code == 403, default_admin.text


# -- keys -----------------------------------------------------------------------------------------


async def test_key_rotation_accepts_tokens_from_each_configured_key(
    app_with: ClientFactory,
    settings: Settings,
    make_token: TokenFactory,
    other_key: rsa.RSAPrivateKey,
    public_pem: str,
) -> None:
    # The new key first, the key our tokens are signed with second.
    rotated = replace(settings, jwt_public_key=f"{pem_of(other_key)}\n{public_pem}")
    async with app_with(rotated) as client:
        second = await client.get(USER_URL, headers=auth(make_token("u")))
        assert second.status_code == 200, second.text
        first = jwt.encode(claims("u"), other_key, algorithm="RS256")
        assert (await client.get(USER_URL, headers=auth(first))).status_code == 200
        stranger = jwt.encode(claims("u"), new_key(), algorithm="RS256")
        assert_401(await client.get(USER_URL, headers=auth(stranger)), "third key")
        assert_401(await client.get(USER_URL, headers=auth(make_token("u", exp_in=-3600))), "exp")


def test_production_refuses_to_start_without_a_key(settings: Settings) -> None:
    assert not settings.is_development
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY"):
        create_app(replace(settings, jwt_public_key=None))


def test_bad_key_configurations_are_refused(settings: Settings, public_pem: str) -> None:
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY"):
        create_app(replace(settings, jwt_public_key="not a pem"))
    # A PEM block that is not a key is refused at start-up, not with a 401 on every request.
    garbled = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"
    with pytest.raises(ConfigError, match="not a public key"):
        create_app(replace(settings, jwt_public_key=public_pem + garbled))
    with pytest.raises(ConfigError, match="JWT_ALGORITHMS"):
        create_app(replace(settings, jwt_algorithms=("RS256", "HS256")))


async def test_hs256_only_when_configured_explicitly(
    app_with: ClientFactory, settings: Settings, make_token: TokenFactory
) -> None:
    secret = "a-long-development-shared-secret-of-32-bytes"
    hmac_settings = replace(settings, jwt_algorithms=("HS256",), jwt_public_key=secret)
    async with app_with(hmac_settings) as client:
        good = jwt.encode(claims("dev"), secret, algorithm="HS256")
        assert (await client.get(USER_URL, headers=auth(good))).status_code == 200
        assert_401(await client.get(USER_URL, headers=auth(make_token("dev"))), "RS256 token")
        wrong = jwt.encode(claims("dev"), secret + "x", algorithm="HS256")
        assert_401(await client.get(USER_URL, headers=auth(wrong)), "wrong secret")


async def test_development_mode_accepts_cli_tokens(
    app_with: ClientFactory,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
    make_token: TokenFactory,
) -> None:
    monkeypatch.setenv("HELPDESK_DEV_KEY_DIR", str(tmp_path / "devkeys"))
    for name in ("JWT_ISSUER", "JWT_AUDIENCE", "JWT_ADMIN_ROLE", "APP_ENV"):
        monkeypatch.delenv(name, raising=False)

    def mint(*args: str) -> str:
        assert cli_main(["token", *args]) == 0
        return capsys.readouterr().out.strip()

    user_token = mint("--sub", "dev-user")
    admin_token = mint("--sub", "dev-admin", "--admin")
    assert (tmp_path / "devkeys").is_dir()

    dev = replace(settings, app_env="development", jwt_public_key=None)
    async with app_with(dev) as client:
        created = await client.post(
            USER_URL, json={"subject": "dev", "body": "hello"}, headers=auth(user_token)
        )
        assert created.status_code == 201, created.text
        assert (await client.get(USER_URL, headers=auth(user_token))).json()["pagination"][
            "total"
        ] == 1
        assert (await client.get(ADMIN_URL, headers=auth(admin_token))).status_code == 200
        assert (await client.get(ADMIN_URL, headers=auth(user_token))).status_code == 403
        # Tokens from any other key are still refused in development.
        assert_401(await client.get(USER_URL, headers=auth(make_token("u"))), "foreign key")

    # A production deployment never trusts the development key.
    async with app_with(settings) as client:
        assert_401(await client.get(USER_URL, headers=auth(user_token)), "dev token in prod")
