"""One settings object, read from the environment once per process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = ROOT / "var"

# development: SQLite and an embedded Redis allowed, a fixed signing key,
# X-Query-Count on; production: SECRET_KEY required, nothing insecure by default.
ENVIRONMENTS = ("development", "production")

# OTEL_TRACES_SAMPLER's values (OpenTelemetry's names).
SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)  # fmt: skip

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(RuntimeError):
    """Raised when the environment cannot produce a valid configuration."""


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _float(value: str, name: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


# The database URL forms users type, mapped to the driver Conveyor ships
# (psycopg2). SQLAlchemy 2.x reads a bare `postgresql://` as psycopg 3, which
# is not installed; Heroku-style platforms hand out `postgres://`.
_POSTGRES_SCHEMES = {"postgresql": "postgresql+psycopg2", "postgres": "postgresql+psycopg2"}
_DATABASE_SCHEMES = ("postgresql+psycopg2", "sqlite")


def normalize_database_url(url: str) -> str:
    """`url` with a bare `postgresql://` or `postgres://` scheme pinned to psycopg2."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("DATABASE_URL must look like postgresql://user:password@host:5432/db")
    scheme = _POSTGRES_SCHEMES.get(scheme.lower(), scheme.lower())
    if scheme not in _DATABASE_SCHEMES:
        raise ConfigError(
            "DATABASE_URL must start with postgresql://, postgres://, "
            f"postgresql+psycopg2:// or sqlite://, got {url.partition('://')[0]}://"
        )
    return f"{scheme}://{rest}"


def is_redis_url(url: str) -> bool:
    """True when `url` names a Redis server (redis://, rediss://, unix://)."""
    return url.partition("://")[0].lower() in ("redis", "rediss", "unix")


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """REDIS_SENTINELS (`host:port,host:port,...`; `[v6 address]:port`) as (host, port) pairs."""
    addresses = []
    for raw in value.split(","):
        entry = raw.strip()
        host, sep, port = entry.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"REDIS_SENTINELS must look like host:26379,host:26379, got {entry!r}"
            )
        addresses.append((host, int(port)))
    return tuple(addresses)


def _env(name: str, **kwargs):
    """A dataclass field read from the environment variable `name`."""
    return field(metadata={"env": name}, **kwargs)


def environment_names() -> frozenset[str]:
    """Every environment variable Settings reads."""
    return frozenset(f.metadata["env"] for f in fields(Settings))


@dataclass(frozen=True)
class Settings:
    """Every knob Conveyor has; see README "Configuration" for each one."""

    env: str = _env("CONVEYOR_ENV", default="development")
    port: int = _env("PORT", default=8000)
    database_url: str = _env("DATABASE_URL", default="")
    redis_url: str = _env("REDIS_URL", default="redis://127.0.0.1:6379/0")
    celery_broker_url: str = _env("CELERY_BROKER_URL", default="")
    celery_result_backend: str = _env("CELERY_RESULT_BACKEND", default="")
    # Redis Sentinel (docs/sentinel.md): with these set, every Redis user asks the
    # sentinels (`host:port,host:port,...`) where master `REDIS_SENTINEL_MASTER` is and
    # follows a failover; REDIS_URL then gives only the database number and password,
    # REDIS_SENTINEL_PASSWORD the sentinels' own (their `requirepass`), if they have one.
    redis_sentinels: str = _env("REDIS_SENTINELS", default="")
    redis_sentinel_master: str = _env("REDIS_SENTINEL_MASTER", default="")
    redis_sentinel_password: str = _env("REDIS_SENTINEL_PASSWORD", default="")
    # Which adjustments of third-party code this process applies (tuning/__init__.py):
    # on, off (the stock libraries), or a list like `-fast_publish,-collector`.
    tuning: str = _env("CONVEYOR_TUNING", default="on")
    # false: job messages go through Celery's send_task even with a Redis broker
    # (the same as CONVEYOR_TUNING=-fast_publish).
    broker_fast_publish: bool = _env("BROKER_FAST_PUBLISH", default=True)
    # Prefix for every key Conveyor writes in Redis (and, through kombu's
    # global_keyprefix, the broker's keys), so several stacks share a server.
    redis_key_prefix: str = _env("CONVEYOR_REDIS_PREFIX", default="conveyor:")
    secret_key: str = _env("SECRET_KEY", default="")
    admin_username: str = _env("CONVEYOR_ADMIN_USERNAME", default="")
    admin_password: str = _env("CONVEYOR_ADMIN_PASSWORD", default="")
    token_ttl_seconds: int = _env("TOKEN_TTL_SECONDS", default=3600)
    # werkzeug's method string; tests lower the scrypt cost, production keeps it.
    password_hash_method: str = _env("PASSWORD_HASH_METHOD", default="scrypt")
    login_generates_transactions: bool = _env("LOGIN_GENERATES_TRANSACTIONS", default=True)
    default_currency: str = _env("DEFAULT_CURRENCY", default="USD")

    # Jobs
    job_ttl_seconds: int = _env("JOB_TTL_SECONDS", default=7 * 24 * 3600)
    idempotency_ttl_seconds: int = _env("IDEMPOTENCY_TTL_SECONDS", default=24 * 3600)
    max_inflight_jobs: int = _env("MAX_INFLIGHT_JOBS", default=50)
    notifications_max: int = _env("NOTIFICATIONS_MAX", default=100)
    notifications_ttl_seconds: int = _env("NOTIFICATIONS_TTL_SECONDS", default=7 * 24 * 3600)

    # Rate limits (flask-limiter strings)
    ratelimit_enabled: bool = _env("RATELIMIT_ENABLED", default=True)
    ratelimit_anonymous: str = _env("RATELIMIT_ANONYMOUS", default="10/minute")
    ratelimit_auth: str = _env("RATELIMIT_AUTH", default="5/minute")
    ratelimit_user: str = _env("RATELIMIT_USER", default="60/minute;1000/day")
    ratelimit_ai: str = _env("RATELIMIT_AI", default="20/hour")
    # Status polls and stream connects, per user: their own budget, apart from
    # RATELIMIT_USER, so following a job never starves the rest of the API.
    ratelimit_poll: str = _env("RATELIMIT_POLL", default="600/minute")
    queue_max_depth: int = _env("QUEUE_MAX_DEPTH", default=10000)
    # Fair share (shared/jobs/fair.py): how many of one user's jobs of a queue
    # may be on the broker or running at once (0: no cap; the fair order
    # already shares the workers, and a cap would idle them when others wait
    # for nothing). Per-user overrides: PUT /api/v1/admin/users/<id>/fair-share.
    ai_user_concurrency: int = _env("AI_USER_CONCURRENCY", default=0)
    ledger_user_concurrency: int = _env("LEDGER_USER_CONCURRENCY", default=0)
    # Jobs a fair queue keeps on the broker while no worker advertises its
    # slots (none started yet): they reach the broker as before fair share.
    fair_idle_window: int = _env("FAIR_IDLE_WINDOW", default=100)
    # Jobs of a fair queue let onto the broker at once (0: the live workers'
    # advertised slots, each worker its concurrency plus FAIR_SLOT_MARGIN).
    fair_window_ai: int = _env("FAIR_WINDOW_AI", default=0)
    fair_window_ledger: int = _env("FAIR_WINDOW_LEDGER", default=0)
    fair_slot_margin: int = _env("FAIR_SLOT_MARGIN", default=1)
    # Where rate-limit counters live; empty means REDIS_URL. A separate Redis
    # keeps limiter traffic off the broker's server when that matters.
    ratelimit_storage_url: str = _env("RATELIMIT_STORAGE_URL", default="")
    # Proxies in front of the web process that append to X-Forwarded-For; the
    # per-IP limits key on the client address they report (0: the peer itself).
    trusted_proxy_hops: int = _env("TRUSTED_PROXY_HOPS", default=0)

    # AI
    ai_provider: str = _env("AI_PROVIDER", default="")
    ai_base_url: str = _env("AI_BASE_URL", default="https://api.openai.com/v1")
    ai_api_key: str = _env("AI_API_KEY", default="")
    ai_model: str = _env("AI_MODEL", default="gpt-4o-mini")
    ai_image_model: str = _env("AI_IMAGE_MODEL", default="dall-e-3")
    ai_timeout_seconds: float = _env("AI_TIMEOUT_SECONDS", default=60.0)
    ai_max_retries: int = _env("AI_MAX_RETRIES", default=2)
    ai_retry_backoff_seconds: float = _env("AI_RETRY_BACKOFF_SECONDS", default=2.0)
    ai_daily_call_limit: int = _env("AI_DAILY_CALL_LIMIT", default=200)
    ai_worker_concurrency: int = _env("AI_WORKER_CONCURRENCY", default=100)

    # Cache TTLs, seconds
    cache_ttl_wallet: int = _env("CACHE_TTL_WALLET", default=60)
    cache_ttl_transactions: int = _env("CACHE_TTL_TRANSACTIONS", default=60)
    cache_ttl_ai_text: int = _env("CACHE_TTL_AI_TEXT", default=30 * 60)
    cache_ttl_ai_presentation: int = _env("CACHE_TTL_AI_PRESENTATION", default=60 * 60)
    cache_ttl_ai_image: int = _env("CACHE_TTL_AI_IMAGE", default=2 * 60 * 60)
    cache_enabled: bool = _env("CACHE_ENABLED", default=True)
    # GET /transactions pages up to this number are cached (the rest read the DB).
    cache_transactions_pages: int = _env("CACHE_TRANSACTIONS_PAGES", default=2)
    # Cache warming: who counts as active, how many per bulk query, which AI entries.
    cache_warm_active_seconds: int = _env("CACHE_WARM_ACTIVE_SECONDS", default=3600)
    cache_warm_batch_size: int = _env("CACHE_WARM_BATCH_SIZE", default=500)
    cache_warm_ai_top: int = _env("CACHE_WARM_AI_TOP", default=20)
    cache_warm_ai_expiring_seconds: int = _env("CACHE_WARM_AI_EXPIRING_SECONDS", default=600)

    # Redis broker: a message held by a worker that stops renewing its lease
    # (the worker died) goes back on its queue after this many seconds; live
    # workers renew theirs, so a long job is never redelivered while it runs.
    broker_visibility_timeout: int = _env("BROKER_VISIBILITY_TIMEOUT", default=90)

    # Housekeeping (beat): when a PENDING job counts as lost, and the slack
    # past a task's hard time limit before a STARTED job counts as stuck.
    # 60 s: kombu's BRPOP takes a message off its list before the worker records
    # it as unacked, so a worker killed in between loses it from Redis; the sweep
    # (every minute) is what brings such a job back, within two minutes.
    redispatch_after_seconds: int = _env("REDISPATCH_AFTER_SECONDS", default=60)
    stuck_grace_seconds: int = _env("STUCK_GRACE_SECONDS", default=60)
    stuck_max_redispatches: int = _env("STUCK_MAX_REDISPATCHES", default=3)

    # Webhooks: outgoing deliveries (shared/webhooks.py). Private, loopback and
    # link-local targets are refused unless allowed (development and tests).
    webhook_allow_private_urls: bool = _env("WEBHOOK_ALLOW_PRIVATE_URLS", default=False)
    webhook_timeout_seconds: float = _env("WEBHOOK_TIMEOUT_SECONDS", default=5.0)
    # Back-off: base * 2**(attempt-1), capped; retried until the window has passed.
    webhook_retry_base_seconds: float = _env("WEBHOOK_RETRY_BASE_SECONDS", default=5.0)
    webhook_retry_max_seconds: float = _env("WEBHOOK_RETRY_MAX_SECONDS", default=3600.0)
    webhook_retry_window_seconds: int = _env("WEBHOOK_RETRY_WINDOW_SECONDS", default=24 * 3600)

    # Observability
    log_level: str = _env("LOG_LEVEL", default="INFO")
    log_format: str = _env("LOG_FORMAT", default="json")
    slow_request_seconds: float = _env("SLOW_REQUEST_SECONDS", default=1.0)
    slow_query_ms: float = _env("SLOW_QUERY_MS", default=100.0)
    cors_origins: str = _env("CORS_ORIGINS", default="")
    flower_port: int = _env("FLOWER_PORT", default=5555)
    # The `events` process (event streams): its port, how long a stream ticket
    # lives, and how often an idle stream gets a keep-alive comment.
    events_port: int = _env("EVENTS_PORT", default=8001)
    events_ticket_ttl_seconds: int = _env("EVENTS_TICKET_TTL_SECONDS", default=60)
    events_keepalive_seconds: float = _env("EVENTS_KEEPALIVE_SECONDS", default=15.0)
    # A quiet job stream asks the job's row at most this often, so a job whose last
    # event was lost (written while Redis was down) still ends its stream.
    events_row_check_seconds: float = _env("EVENTS_ROW_CHECK_SECONDS", default=60.0)
    flower_basic_auth: str = _env("FLOWER_BASIC_AUTH", default="")
    # Event streams `web` answers itself (api/held_streams.py): held open this long
    # on a blocking read of the job's own log, at most this many per gevent worker
    # at once; past that many, or with 0, they replay and close.
    web_stream_hold_seconds: float = _env("WEB_STREAM_HOLD_SECONDS", default=20.0)
    web_streams_held_max: int = _env("WEB_STREAMS_HELD_MAX", default=100)
    # Port of the worker's own Prometheus exporter (task metrics); 0 turns it off.
    worker_metrics_port: int = _env("WORKER_METRICS_PORT", default=0)

    # Private metrics: the bearer token GET /metrics asks for (unset: /metrics
    # refuses everyone), and the interface the worker's exporter listens on.
    metrics_token: str = _env("METRICS_TOKEN", default="")
    worker_metrics_host: str = _env("WORKER_METRICS_HOST", default="127.0.0.1")

    # Tracing (infra/tracing.py), OpenTelemetry's standard variables: off unless
    # OTEL_TRACES_EXPORTER is otlp (OTLP over HTTP/protobuf) or console.
    otel_traces_exporter: str = _env("OTEL_TRACES_EXPORTER", default="")
    otel_exporter_otlp_endpoint: str = _env("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
    otel_exporter_otlp_traces_endpoint: str = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", default="")
    otel_exporter_otlp_protocol: str = _env("OTEL_EXPORTER_OTLP_PROTOCOL", default="http/protobuf")
    otel_exporter_otlp_headers: str = _env("OTEL_EXPORTER_OTLP_HEADERS", default="")
    otel_service_name: str = _env("OTEL_SERVICE_NAME", default="")
    otel_traces_sampler: str = _env("OTEL_TRACES_SAMPLER", default="parentbased_always_on")
    otel_traces_sampler_arg: str = _env("OTEL_TRACES_SAMPLER_ARG", default="")
    otel_bsp_schedule_delay: int = _env("OTEL_BSP_SCHEDULE_DELAY", default=5000)

    # Poison jobs: a job whose runs were lost this many times (its worker
    # process died under it) fails with code `worker_lost` instead of running again.
    poison_max_lost_runs: int = _env("POISON_MAX_LOST_RUNS", default=3)
    # X-Query-Count on every response, to catch N+1 queries; always on outside production.
    debug_query_count: bool = _env("DEBUG_QUERY_COUNT", default=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `environ` (default: os.environ) and validate them."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in environ:
                continue
            raw = environ[name]
            if f.type in ("bool", bool):
                values[f.name] = _bool(raw, name)
            elif f.type in ("int", int):
                values[f.name] = _int(raw, name)
            elif f.type in ("float", float):
                values[f.name] = _float(raw, name)
            else:
                values[f.name] = raw
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse configurations that would be unsafe or cannot work."""
        if self.env not in ENVIRONMENTS:
            raise ConfigError(
                f"CONVEYOR_ENV must be one of {', '.join(ENVIRONMENTS)}, got {self.env!r}"
            )
        if self.is_production and not self.secret_key:
            raise ConfigError("SECRET_KEY is required when CONVEYOR_ENV=production")
        if self.is_production and len(self.secret_key) < 32:
            raise ConfigError("SECRET_KEY must be at least 32 characters in production")
        if self.resolved_ai_provider not in ("offline", "openai"):
            raise ConfigError(f"AI_PROVIDER must be offline or openai, got {self.ai_provider!r}")
        if self.resolved_ai_provider == "openai" and not self.ai_api_key:
            raise ConfigError("AI_PROVIDER=openai needs AI_API_KEY")
        if self.database_url:
            normalize_database_url(self.database_url)
        self._validate_sentinel()
        if self.broker_visibility_timeout < 2:
            raise ConfigError("BROKER_VISIBILITY_TIMEOUT must be at least 2 seconds")
        from tuning.registry import Selection, TuningError

        try:
            Selection.parse(self.tuning)
        except TuningError as exc:
            raise ConfigError(str(exc)) from None
        if self.log_format not in ("json", "console"):
            raise ConfigError(f"LOG_FORMAT must be json or console, got {self.log_format!r}")
        if self.otel_traces_exporter not in ("", "none", "otlp", "console"):
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER is otlp, console or none, not {self.otel_traces_exporter!r}"
            )
        if self.tracing and self.otel_exporter_otlp_protocol != "http/protobuf":
            raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL: only http/protobuf is installed")
        if self.tracing and self.otel_traces_sampler not in SAMPLERS:
            raise ConfigError(f"OTEL_TRACES_SAMPLER must be one of {', '.join(SAMPLERS)}")
        if self.poison_max_lost_runs < 1:
            raise ConfigError("POISON_MAX_LOST_RUNS must be at least 1")
        if (
            self.events_ticket_ttl_seconds < 1
            or self.events_keepalive_seconds <= 0
            or self.events_row_check_seconds <= 0
        ):
            raise ConfigError(
                "EVENTS_TICKET_TTL_SECONDS, EVENTS_KEEPALIVE_SECONDS and "
                "EVENTS_ROW_CHECK_SECONDS must be positive"
            )
        if self.web_stream_hold_seconds < 0 or self.web_streams_held_max < 0:
            raise ConfigError("WEB_STREAM_HOLD_SECONDS and WEB_STREAMS_HELD_MAX must be 0 or more")

    def _validate_sentinel(self) -> None:
        """Both Sentinel variables or neither; every Redis behind them is the one master."""
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ConfigError("REDIS_SENTINELS and REDIS_SENTINEL_MASTER must be set together")
        if not self.redis_sentinels:
            return
        parse_sentinels(self.redis_sentinels)
        if not self.redis_url.startswith("redis://"):
            raise ConfigError(
                "with REDIS_SENTINELS, REDIS_URL must be redis://[:password@]host/db "
                "(only its database number and password are used)"
            )
        others = {
            "CELERY_BROKER_URL": self.celery_broker_url,
            "CELERY_RESULT_BACKEND": self.celery_result_backend,
            "RATELIMIT_STORAGE_URL": self.ratelimit_storage_url,
        }
        for name, url in others.items():
            # Another Redis would be a server that does not fail over with the rest.
            if is_redis_url(url) and url != self.redis_url:
                raise ConfigError(
                    f"with REDIS_SENTINELS, {name} must be empty (the Sentinel master) "
                    "or name something other than Redis"
                )

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each of REDIS_SENTINELS; empty when Redis is one server."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else ()

    @property
    def tracing(self) -> bool:
        """Whether this process exports spans (OTEL_TRACES_EXPORTER set, not `none`)."""
        return self.otel_traces_exporter not in ("", "none")

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: DATABASE_URL with its scheme pinned to psycopg2, else SQLite."""
        if not self.database_url:
            return f"sqlite:///{VAR_DIR / 'conveyor.db'}"
        return normalize_database_url(self.database_url)

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or self.redis_url

    @property
    def resolved_ai_provider(self) -> str:
        """`offline` unless configured otherwise; `openai` when only a key is set."""
        if self.ai_provider:
            return self.ai_provider
        return "openai" if self.ai_api_key else "offline"

    @property
    def signing_key(self) -> str:
        # Development without SECRET_KEY gets a fixed, obviously-unsafe key so
        # tokens survive restarts; production refuses to start without one.
        return self.secret_key or "conveyor-development-only-insecure-key"

    def __repr__(self) -> str:  # never print secrets
        return f"Settings(env={self.env!r}, database={'set' if self.database_url else 'sqlite'})"
