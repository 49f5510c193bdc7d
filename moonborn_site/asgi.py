"""ASGI entry point: `uvicorn moonborn_site.asgi:application` (or daphne through runserver)."""

import gc
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")

# Sets Django up; the handlers that serve are built below (moonborn_site.handlers).
get_asgi_application()


def _check_settings() -> None:
    """Refuse to start without a real secret key in production, with provider settings that cannot work, without the
    weights of the configured local embedder, or without a tier-0 drift table and the weights to build one: one
    sentence, no traceback."""
    from django.conf import settings

    from accounts.checks import secret_key_error
    from llm.checks import weights_error
    from llm.providers import configuration_error
    from llm.static_embeddings import table_error

    error = secret_key_error() or configuration_error() or weights_error() or table_error(settings.MOONBORN_CACHE_DIR)
    if error is not None:
        sys.stderr.write(f"Moonborn cannot start: {error}\n")
        raise SystemExit(1)


_check_settings()


def _claim_database() -> None:
    """Without Redis, refuse to be a second server of the same database (its recovery would fail the first's runs)."""
    from runs.lifecycle import sole_server_error

    error = sole_server_error()
    if error is not None:
        sys.stderr.write(f"Moonborn cannot start: {error}\n")
        raise SystemExit(1)


_claim_database()


def _warm_up() -> None:
    from chat.scoring import warm_up

    # The tier-0 table (built here on a first start, ~30 s of CPU, if scripts/install did not build it).
    warm_up()


# Load the tier-0 table before serving, so the first reply does not wait for it.
_warm_up()


# Imported once the apps are loaded (above).
from moonborn_site.edge import BodyCap  # noqa: E402
from moonborn_site.handlers import ApiHandler, ByCredentials, PooledASGIHandler  # noqa: E402
from runs.lifecycle import StreamGuard, recover_at_start  # noqa: E402

# Runs that a previous process left unfinished become `failed` before anything is served.
recover_at_start()


def _start_tier1_worker() -> None:
    from django.conf import settings

    from chat.tier1 import spawn_tier1_worker

    if settings.MOONBORN_DRIFT_TIER1_WORKER:
        # Tier-1 drift scores, after `completed`: a worker process beside this one (chat.tier1).
        spawn_tier1_worker()


_start_tier1_worker()

# Bodies are capped before anything reads them (moonborn_site.edge).
application = StreamGuard(BodyCap(ByCredentials(PooledASGIHandler(), ApiHandler())))

# What start-up loaded lives as long as the process: move it out of the collector's sight, so that full
# collections (whose cost grows with the heap, thousands of open streams included) do not walk it again.
gc.collect()
gc.freeze()
# Every collection stops every stream at once: the shorter each, the better. The whole heap is collected far less
# often than by default: with a thousand replies streaming a full collection took ~35 ms (measured: jitter p99 at
# 1,000 streams 65 → 20-28 ms). Young objects are collected every 2,000 net allocations (default 700): a thousand
# streams starting or ending at once keep what they allocate, and a young collection walks all of it. At 50,000 it
# walked ~50,000 objects in 9-31 ms, once as the streams started and once as they ended, and that pause alone made
# ~1 % of the tokens late; at 2,000 the longest pause of such a round was ~5 ms. The middle generation keeps its
# old pace (every 2.5 million net allocations), but it comes sooner in time: with 10,000 streams held open, one
# collection of it took ~0.9 s.
gc.set_threshold(2_000, 1_250, 1000)
