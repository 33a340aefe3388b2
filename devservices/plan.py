"""Which PostgreSQL and Redis to use: a real server that is configured or answers, or an
embedded one. Nothing here starts a process."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from domain.settings import Settings

MODES = ("auto", "embedded", "external")
MODE_VARIABLE = "SERVICES"


class PlanError(RuntimeError):
    """The servers asked for cannot be used; the message says which variable to set."""


@dataclass(frozen=True)
class Profile:
    """The variables one kind of command reads its servers from, and their defaults."""

    name: str
    database_variable: str
    redis_variable: str
    default_database_url: str
    default_redis_url: str
    # Whether embedded data is kept between runs (``make run``) or thrown away (``make test``).
    persistent: bool


APP = Profile(
    "app",
    "DATABASE_URL",
    "REDIS_URL",
    Settings.database_url,
    Settings.redis_url,
    persistent=True,
)
# The same defaults tests/conftest.py falls back to when its variables are unset.
TEST = Profile(
    "test",
    "TEST_DATABASE_URL",
    "TEST_REDIS_URL",
    "postgresql://root@127.0.0.1:5432/helpdesk_test",
    "redis://127.0.0.1:6379/15",
    persistent=False,
)
PROFILES = {profile.name: profile for profile in (APP, TEST)}


@dataclass(frozen=True)
class Choice:
    """One server: ``url`` is the real server to use, or None when an embedded one must run."""

    service: str  # "PostgreSQL" or "Redis"
    variable: str
    default_url: str
    url: str | None
    why: str

    @property
    def embedded(self) -> bool:
        return self.url is None


def address(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (6379 if parts.scheme.startswith("redis") else 5432)
    return f"{parts.hostname or '127.0.0.1'}:{port}"


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection at the URL's host and port."""
    host, _, port = address(url).rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout):
            return True
    except OSError:
        return False


def with_address(url: str, host: str, port: int, user: str | None = None) -> str:
    """``url`` with its host and port (and user) replaced; database / db number kept."""
    parts = urlsplit(url)
    netloc = f"{host}:{port}"
    if user:
        netloc = f"{user}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def read_env_file(path: Path | None) -> dict[str, str]:
    """The variables of a ``.env`` file, parsed as honcho parses it (honcho applies them over
    the environment, so they win here too)."""
    if path is None or not path.is_file():
        return {}
    from honcho.environ import parse

    return {str(k): str(v) for k, v in parse(path.read_text()).items()}


def mode_of(env: dict[str, str]) -> str:
    mode = env.get(MODE_VARIABLE, "").strip().lower() or "auto"
    if mode not in MODES:
        raise PlanError(f"{MODE_VARIABLE} must be auto, embedded or external, got {mode!r}")
    return mode


def _choose(
    service: str, variable: str, default_url: str, env: dict[str, str], mode: str
) -> Choice:
    configured = env.get(variable, "").strip()
    # A .env copied from .env.example names the default URL: that is the default, not a choice.
    if configured == default_url:
        configured = ""
    if mode == "embedded":
        return Choice(service, variable, default_url, None, f"{MODE_VARIABLE}=embedded")
    url = configured or default_url
    if answers(url):
        why = f"{variable} is set" if configured else "answering on the default address"
        return Choice(service, variable, default_url, url, why)
    if mode == "external":
        raise PlanError(
            f"{MODE_VARIABLE}=external, but no {service} answers at {address(url)}: start it, "
            f"or set {variable} to a {service} that runs (or {MODE_VARIABLE}=auto to embed one)"
        )
    if configured:
        raise PlanError(
            f"{variable} points at {address(url)}, where no {service} answers: start it, or "
            f"unset {variable} to use an embedded {service}"
        )
    return Choice(service, variable, default_url, None, f"nothing answers at {address(url)}")


def plan(
    profile: Profile,
    env: dict[str, str],
    *,
    default_database_url: str | None = None,
    default_redis_url: str | None = None,
) -> tuple[Choice, Choice]:
    """Decide PostgreSQL and Redis for ``profile``; ``env`` is the environment (with any .env
    applied). The default URLs can be moved (tests point them at closed ports)."""
    mode = mode_of(env)
    database = _choose(
        "PostgreSQL",
        profile.database_variable,
        default_database_url or profile.default_database_url,
        env,
        mode,
    )
    redis = _choose(
        "Redis", profile.redis_variable, default_redis_url or profile.default_redis_url, env, mode
    )
    return database, redis
