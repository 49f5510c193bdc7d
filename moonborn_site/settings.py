"""Moonborn settings: one file, every knob read from the environment (see .env.example)."""

from pathlib import Path

import environ

from moonborn_site.secret import local_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# Off unless asked for: a deployment that forgets the variable must not serve tracebacks (scripts/dev asks for it).
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# With DEBUG off, a missing, short or well-known key refuses to start (accounts.checks). Without a key a random one
# is made once for this checkout (var/secret-key), so no key published anywhere ever signs a session or a token.
SECRET_KEY_FROM_ENV = env.str("DJANGO_SECRET_KEY", default="")
SECRET_KEY = SECRET_KEY_FROM_ENV or local_secret_key(BASE_DIR / "var" / "secret-key")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# HTTPS (README, "Production"). Cookies are Secure unless DEBUG is on or the deployment opts out: behind TLS they must
# be, and a plain-HTTP production is the exception that has to say so.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
# Behind a TLS-terminating proxy Django sees plain HTTP: trust the proxy's X-Forwarded-Proto only when told to (a
# client could send the header itself when nothing strips it).
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
# The load balancer probes /healthz over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# HSTS is remembered by browsers for its whole lifetime: off until the deployment turns it on.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    # First, so that its `manage.py runserver` (daphne's, refusing to start on a check error) is the one that runs.
    "moonborn_site",
    # Before staticfiles, so that `manage.py runserver` serves ASGI (and therefore streams).
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "runs",
    "llm",
    "personas",
    "chat",
    "web",
]

MIDDLEWARE = [
    # Outermost: turns every error response under /v1/ into the JSON error body of api.md.
    "moonborn_site.middleware.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Write rates per key or session, and failed sign-ins (moonborn_site.throttle).
    "moonborn_site.throttle.ThrottleMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # No GZipMiddleware: it would compress text/event-stream. Compress JSON at the proxy if wanted.
]
# Requests under /v1/ that carry an Authorization header (API keys) go through these only
# (moonborn_site.handlers): no session, CSRF or messages to process, and no middleware that hops to a thread.
MOONBORN_API_MIDDLEWARE = [
    "moonborn_site.middleware.ApiErrorMiddleware",
    "moonborn_site.middleware.InlineSecurityMiddleware",
    "moonborn_site.throttle.ThrottleMiddleware",
]

ROOT_URLCONF = "moonborn_site.urls"
ASGI_APPLICATION = "moonborn_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
# Streams hold no connection: each short write opens and closes its own.
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Short writes from several threads at once: wait for the lock instead of failing at once.
    # WAL: readers do not wait for the writer, and a commit appends to the log without an fsync per transaction
    # (synchronous=NORMAL keeps the database consistent through a crash; the last commits before a power cut can
    # be lost, as with PostgreSQL's synchronous_commit=off).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg 3's pool: runs take a connection per short write and give it straight back.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env.int("MOONBORN_DB_POOL_SIZE", default=10),
        "timeout": 10,
        # Connections past min_size that sit idle this long are closed: the pool shrinks after a burst.
        "max_idle": env.float("MOONBORN_DB_POOL_MAX_IDLE_SECONDS", default=60.0),
    }
    # With the pool, Django has it check a connection (an empty query) before handing it out, and replace it if the
    # server dropped it (a restart, a failover, a proxy's idle timeout): otherwise each dead one fails a request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

# Request bodies: the largest valid body is a chat message of 8000 characters (up to 4 bytes each).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MOONBORN_MAX_BODY_BYTES", default=64 * 1024)
# Every body is capped before Django reads it (moonborn_site.edge), the largest (a card upload) at 8 MiB and a bit:
# one that fits is kept in memory, never spooled to a temporary file from the event loop.
FILE_UPLOAD_MAX_MEMORY_SIZE = 9 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["djangorestframework_camel_case.render.CamelCaseJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["djangorestframework_camel_case.parser.CamelCaseJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "moonborn_site.api.NewestFirstCursorPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "moonborn_site.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# The OpenAPI schema of /v1/ (moonborn_site.schema), served at /v1/openapi.json with Swagger UI at /v1/docs and Redoc
# at /v1/redoc, whose files come from drf-spectacular-sidecar (no CDN).
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "moonborn_site.schema.AutoSchema"
SPECTACULAR_SETTINGS = {
    "TITLE": "Moonborn API",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "DEFAULT_GENERATOR_CLASS": "moonborn_site.schema.SchemaGenerator",
    "SCHEMA_PATH_PREFIX": "/v1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Public: the schema and its pages are the same for everyone, and need no credentials to read.
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The wire is camelCase (djangorestframework-camel-case's renderer): so are the schema's properties.
        "drf_spectacular.contrib.djangorestframework_camel_case.camelize_serializer_fields",
    ],
    "ENUM_NAME_OVERRIDES": {
        "PersonaStatusEnum": "personas.models.Persona.Status",
        "MessageStatusEnum": "chat.models.Message.Status",
        "RunStatusEnum": "accounts.models.UsageRecord.Status",
        "RunKindEnum": "accounts.models.UsageRecord.Kind",
        "StreamErrorCodeEnum": "moonborn_site.openapi.STREAM_ERROR_CODES",
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("MOONBORN_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Moonborn (api.md, "Operations") ---
REDIS_URL = env.str("REDIS_URL", default="")
# The run hub's backend (runs.hub.get_hub): the in-process one, or the one shared through Redis when REDIS_URL is set.
MOONBORN_HUB_BACKEND = "runs.redis_hub.RedisHub" if REDIS_URL else "runs.hub.InProcessHub"
MOONBORN_LLM_PROVIDER = env.str("MOONBORN_LLM_PROVIDER", default="demo")
MOONBORN_LLM_MODEL = env.str("MOONBORN_LLM_MODEL", default="")
MOONBORN_LLM_BASE_URL = env.str("MOONBORN_LLM_BASE_URL", default="")
MOONBORN_LLM_API_KEY = env.str("MOONBORN_LLM_API_KEY", default="")
MOONBORN_LLM_TIMEOUT_SECONDS = env.float("MOONBORN_LLM_TIMEOUT_SECONDS", default=120.0)
# Provider credentials when MOONBORN_LLM_API_KEY is unset (the SDKs' own variable names).
MOONBORN_OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
MOONBORN_ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
# Further attempts of an upstream call that failed before its first token (never after it).
MOONBORN_LLM_MAX_RETRIES = env.int("MOONBORN_LLM_MAX_RETRIES", default=2)
# The provider's circuit breaker (llm.breaker): this many failed calls in a row (0: never) and no call goes to the
# provider for this many seconds, then one probe call.
MOONBORN_LLM_BREAKER_FAILURES = env.int("MOONBORN_LLM_BREAKER_FAILURES", default=10)
MOONBORN_LLM_BREAKER_SECONDS = env.float("MOONBORN_LLM_BREAKER_SECONDS", default=30.0)
# openai provider: ask for JSON-schema output in pipeline steps (dropped by itself if the server rejects it).
MOONBORN_LLM_STRUCTURED_OUTPUT = env.bool("MOONBORN_LLM_STRUCTURED_OUTPUT", default=True)
# The most tokens (estimated) a chat reply's prompt may take: the character, its lore and as much recent history as
# fits (the oldest messages are left out first). Leave room in the model's context for the reply (1,024 tokens).
MOONBORN_PROMPT_BUDGET_TOKENS = env.int("MOONBORN_PROMPT_BUDGET_TOKENS", default=6000)
MOONBORN_DEMO_DELAY_MS = env.float("MOONBORN_DEMO_DELAY_MS", default=30.0)
MOONBORN_DEMO_REPLY_TOKENS = env.int("MOONBORN_DEMO_REPLY_TOKENS", default=80)
# Demo provider fault injection for tests and benchmarks: fail a chat reply after this many tokens.
MOONBORN_DEMO_FAIL_AFTER_TOKENS = env.int("MOONBORN_DEMO_FAIL_AFTER_TOKENS", default=-1)
MOONBORN_EMBEDDINGS = env.str("MOONBORN_EMBEDDINGS", default="local")
# MOONBORN_EMBEDDINGS=openai: the embedding model and server (default: MOONBORN_LLM_BASE_URL for openai).
MOONBORN_EMBEDDINGS_MODEL = env.str("MOONBORN_EMBEDDINGS_MODEL", default="text-embedding-3-small")
MOONBORN_EMBEDDINGS_BASE_URL = env.str("MOONBORN_EMBEDDINGS_BASE_URL", default="")
MOONBORN_SSE_HEARTBEAT_SECONDS = env.float("MOONBORN_SSE_HEARTBEAT_SECONDS", default=15.0)
MOONBORN_SSE_WRITE_TIMEOUT_SECONDS = env.float("MOONBORN_SSE_WRITE_TIMEOUT_SECONDS", default=60.0)
# API-key chat streams served on ASGI directly (moonborn_site.handlers); off: Django's API handler serves them too.
MOONBORN_ASGI_FAST_PATH = env.bool("MOONBORN_ASGI_FAST_PATH", default=True)
MOONBORN_EVENT_RETENTION_SECONDS = env.float("MOONBORN_EVENT_RETENTION_SECONDS", default=600.0)
MOONBORN_MAX_STREAMS_PER_KEY = env.int("MOONBORN_MAX_STREAMS_PER_KEY", default=20)
# Requests per minute per API key (or browser session), counted in every worker together when REDIS_URL is set; 0:
# no limit. Every POST counts against the first; imports and new chat sessions against their own too.
MOONBORN_RATE_POSTS_PER_MINUTE = env.int("MOONBORN_RATE_POSTS_PER_MINUTE", default=1200)
MOONBORN_RATE_IMPORTS_PER_MINUTE = env.int("MOONBORN_RATE_IMPORTS_PER_MINUTE", default=60)
MOONBORN_RATE_SESSIONS_PER_MINUTE = env.int("MOONBORN_RATE_SESSIONS_PER_MINUTE", default=600)
# Failed sign-ins (web UI and admin) per account per minute before its sign-ins get 429 for the rest of the minute
# (five times as many per client address); 0: no limit.
MOONBORN_LOGIN_FAILURES_PER_MINUTE = env.int("MOONBORN_LOGIN_FAILURES_PER_MINUTE", default=20)
MOONBORN_REDIS_PREFIX = env.str("MOONBORN_REDIS_PREFIX", default="moonborn")
# A worker that has not refreshed its liveness key for this long is dead; the reaper fails its runs.
MOONBORN_WORKER_TTL_SECONDS = env.float("MOONBORN_WORKER_TTL_SECONDS", default=15.0)
MOONBORN_REAPER_SECONDS = env.float("MOONBORN_REAPER_SECONDS", default=10.0)
# On SIGTERM: the time from the signal to the process's exit, a few seconds under the usual kill grace (30 s in
# Kubernetes), since the server's own exit comes after it. Runs in progress may finish for all of it but the last
# MOONBORN_SHUTDOWN_CANCEL_SECONDS; then the ones left are cancelled and their replies stored, as far as they got.
MOONBORN_SHUTDOWN_DRAIN_SECONDS = env.float("MOONBORN_SHUTDOWN_DRAIN_SECONDS", default=25.0)
MOONBORN_SHUTDOWN_CANCEL_SECONDS = env.float("MOONBORN_SHUTDOWN_CANCEL_SECONDS", default=5.0)
# Partial reply content is written to the database at most this often while a reply streams.
MOONBORN_PROGRESS_FLUSH_SECONDS = env.float("MOONBORN_PROGRESS_FLUSH_SECONDS", default=1.0)
# Drift tiers. Tier 0 (a static table distilled from the packaged MiniLM, built once and kept here) scores every
# reply before `completed`; tier 1 (the embedder of MOONBORN_EMBEDDINGS) scores it again afterwards, off the request
# path, from a queue in the database.
MOONBORN_CACHE_DIR = Path(env.str("MOONBORN_CACHE_DIR", default=str(BASE_DIR / "var" / "cache")))
# How much lower than the server's the tier-1 worker process's CPU priority is (0: the same). Under load the cores go
# to streaming tokens first; tier-1 scores come as soon as the cores are free.
MOONBORN_EMBED_NICE = env.int("MOONBORN_EMBED_NICE", default=10)
# Start a tier-1 worker process beside each server process (false: run `manage.py drift_worker` on its own).
MOONBORN_DRIFT_TIER1_WORKER = env.bool("MOONBORN_DRIFT_TIER1_WORKER", default=True)
# Replies per tier-1 batch, how often an idle worker looks for work, and how long a claimed batch stays claimed
# before another worker may take it (its worker died).
MOONBORN_DRIFT_TIER1_BATCH = env.int("MOONBORN_DRIFT_TIER1_BATCH", default=16)
MOONBORN_DRIFT_TIER1_POLL_SECONDS = env.float("MOONBORN_DRIFT_TIER1_POLL_SECONDS", default=1.0)
MOONBORN_DRIFT_TIER1_LEASE_SECONDS = env.float("MOONBORN_DRIFT_TIER1_LEASE_SECONDS", default=120.0)
# With more replies waiting than this, tier 1 scores only those tier 0 was unsure of, and a sample (chat.tier1).
MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG = env.int("MOONBORN_DRIFT_TIER1_CASCADE_BACKLOG", default=64)
# In-character replies the persona's own model writes at creation, to calibrate drift on (0: none).
MOONBORN_DRIFT_CALIBRATION_REPLIES = env.int("MOONBORN_DRIFT_CALIBRATION_REPLIES", default=8)
