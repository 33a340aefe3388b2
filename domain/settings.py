"""Configuration read from the environment; one set of names for the API, workers and scheduler."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which variable to fix."""


def _int(env: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: dict[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _list(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _opt(env: dict[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class Settings:
    """Every setting of the service. Build with :func:`load_settings`."""

    app_env: str = "production"
    database_url: str = "postgresql://root@127.0.0.1:5432/helpdesk"
    redis_url: str = "redis://127.0.0.1:6379/0"
    port: int = 8000
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_algorithms: tuple[str, ...] = ("RS256",)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_admin_role: str = "admin"
    jwt_leeway_s: int = 30
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_from: str = "helpdesk@localhost"
    smtp_timeout_s: float = 10.0
    admin_emails: tuple[str, ...] = ()
    slack_webhook_url: str | None = field(default=None, repr=False)
    sla_urgent_seconds: int = 3600
    sla_policy_file: str | None = None  # TOML, domain/sla_policy.py; unset: the default policy
    auto_close_seconds: int = 604800
    log_format: str = "json"
    log_level: str = "INFO"
    # Outbox: how often the sweep runs and when a published-but-unhandled event is re-published.
    outbox_sweep_interval_s: float = 2.0
    outbox_republish_after_s: float = 120.0
    outbox_publish_grace_s: float = 5.0
    sla_sweep_interval_s: float = 0.5
    auto_close_sweep_interval_s: float = 30.0
    db_pool_size: int = 10
    max_body_bytes: int = 64 * 1024
    rate_limit_per_minute: int = 600
    # Outbound webhooks (domain/webhooks.py): private targets only when allowed on purpose.
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 5.0
    webhook_secret_grace_s: int = 86400
    webhook_disable_after_s: float = 86400.0

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def sqlalchemy_url(self) -> str:
        """The DATABASE_URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
        return to_sqlalchemy_url(self.database_url)


def to_sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ConfigError(f"DATABASE_URL must be a postgresql:// URL, got {url.split('@')[-1]!r}")


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from ``env`` (default: ``os.environ``), validating each value."""
    env = dict(os.environ if env is None else env)
    app_env = env.get("APP_ENV", "production").strip() or "production"
    if app_env not in {"development", "production"}:
        raise ConfigError(f"APP_ENV must be 'development' or 'production', got {app_env!r}")

    public_key = _opt(env, "JWT_PUBLIC_KEY")
    key_file = _opt(env, "JWT_PUBLIC_KEY_FILE")
    if public_key is None and key_file is not None:
        try:
            public_key = Path(key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"JWT_PUBLIC_KEY_FILE cannot be read: {exc}") from None
    if public_key is not None:
        # Keys passed through one-line env files often carry literal "\n".
        public_key = public_key.replace("\\n", "\n")

    algorithms = _list(env, "JWT_ALGORITHMS") or ("RS256",)
    allowed = {
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
        "HS256",
        "HS384",
        "HS512",
    }
    unknown = [a for a in algorithms if a not in allowed]
    if unknown:
        raise ConfigError(f"JWT_ALGORITHMS has unsupported algorithm(s): {', '.join(unknown)}")

    log_format = env.get("LOG_FORMAT", "").strip().lower()
    if not log_format:
        log_format = "console" if sys.stderr.isatty() else "json"
    if log_format not in {"json", "console"}:
        raise ConfigError(f"LOG_FORMAT must be 'json' or 'console', got {log_format!r}")

    log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")

    database_url = env.get("DATABASE_URL", "").strip() or Settings.database_url
    to_sqlalchemy_url(database_url)  # validates the scheme early

    return Settings(
        app_env=app_env,
        database_url=database_url,
        redis_url=env.get("REDIS_URL", "").strip() or Settings.redis_url,
        port=_int(env, "PORT", 8000, minimum=1),
        jwt_public_key=public_key,
        jwt_jwks_url=_opt(env, "JWT_JWKS_URL"),
        jwt_algorithms=algorithms,
        jwt_issuer=_opt(env, "JWT_ISSUER"),
        jwt_audience=_opt(env, "JWT_AUDIENCE"),
        jwt_admin_role=env.get("JWT_ADMIN_ROLE", "").strip() or "admin",
        smtp_host=_opt(env, "SMTP_HOST"),
        smtp_port=_int(env, "SMTP_PORT", 25, minimum=1),
        smtp_username=_opt(env, "SMTP_USERNAME"),
        smtp_password=_opt(env, "SMTP_PASSWORD"),
        smtp_starttls=_bool(env, "SMTP_STARTTLS", False),
        smtp_tls=_bool(env, "SMTP_TLS", False),
        smtp_from=env.get("SMTP_FROM", "").strip() or "helpdesk@localhost",
        admin_emails=_list(env, "ADMIN_EMAILS"),
        slack_webhook_url=_opt(env, "SLACK_WEBHOOK_URL"),
        sla_urgent_seconds=_int(env, "SLA_URGENT_SECONDS", 3600, minimum=1),
        sla_policy_file=_opt(env, "SLA_POLICY_FILE"),
        auto_close_seconds=_int(env, "AUTO_CLOSE_SECONDS", 604800, minimum=1),
        log_format=log_format,
        log_level=log_level,
        outbox_sweep_interval_s=_float(env, "OUTBOX_SWEEP_INTERVAL_SECONDS", 2.0, minimum=0.05),
        outbox_republish_after_s=_float(env, "OUTBOX_REPUBLISH_AFTER_SECONDS", 120.0, minimum=0.1),
        outbox_publish_grace_s=_float(env, "OUTBOX_PUBLISH_GRACE_SECONDS", 5.0, minimum=0.0),
        sla_sweep_interval_s=_float(env, "SLA_SWEEP_INTERVAL_SECONDS", 0.5, minimum=0.05),
        auto_close_sweep_interval_s=_float(
            env, "AUTO_CLOSE_SWEEP_INTERVAL_SECONDS", 30.0, minimum=0.05
        ),
        db_pool_size=_int(env, "DB_POOL_SIZE", 10, minimum=1),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 64 * 1024, minimum=1024),
        rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 600),
        webhook_allow_private=_bool(env, "WEBHOOK_ALLOW_PRIVATE", False),
        webhook_timeout_s=_float(env, "WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1),
        webhook_secret_grace_s=_int(env, "WEBHOOK_SECRET_GRACE_SECONDS", 86400),
        webhook_disable_after_s=_float(env, "WEBHOOK_DISABLE_AFTER_SECONDS", 86400.0, minimum=1),
    )
