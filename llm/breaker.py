"""A circuit breaker per model provider: a run of failed calls turns the next ones into fast refusals.

Without it, every request during an upstream outage waits out its retries, or its first-token deadline (two minutes
by default), before failing, and adds to the load of an upstream already failing. With it, after
MOONBORN_LLM_BREAKER_FAILURES failed calls in a row the provider gets no call for MOONBORN_LLM_BREAKER_SECONDS:
new runs are refused at once with 503 `provider_unavailable`, and a run already going ends with an `error` event of
that code at its next call. Then one call goes through as a probe; its success closes the breaker, its failure opens
it for another cool-down.
"""

import enum
import logging
import math
import threading
import time
from collections.abc import Callable

from moonborn_site.state import process_state

logger = logging.getLogger(__name__)

# What a caller is told to wait while the probe is out: its verdict comes with its first token or its failure.
PROBE_WAIT_SECONDS = 1.0


class Admission(enum.Enum):
    CALL = "call"
    PROBE = "probe"


class Breaker:
    """The breaker's state machine, over a clock: closed → open → half-open (one probe) → closed or open again.

    Each admitted call reports how it went: `succeeded()` as soon as the upstream answers, `failed(probe=…)` on an
    outage (an HTTP 5xx or 429 once the retries are spent, a timeout, a broken connection), `abandoned(probe=…)` when
    its caller went away before either (no verdict on the upstream). Shared by the threads of a process, hence the lock.
    `failures=0` turns it off.
    """

    def __init__(
        self, *, provider: str, failures: int, cool_down: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.provider = provider
        self.threshold = max(0, failures)
        self.cool_down = cool_down
        self.clock = clock
        # Failed calls in a row while closed.
        self.failures = 0
        # When it opened (None while closed), and whether the probe is out.
        self.opened_at: float | None = None
        self.probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """`closed`, `open` (refusing every call) or `half_open` (the cool-down is over: one probe goes, or is out)."""
        with self._lock:
            if self.opened_at is None:
                return "closed"
            return "half_open" if self.probing or self._cooling(self.clock()) <= 0 else "open"

    def _cooling(self, now: float) -> float:
        assert self.opened_at is not None
        return self.opened_at + self.cool_down - now

    def _wait(self, now: float) -> float | None:
        if self.opened_at is None:
            return None
        cooling = self._cooling(now)
        if cooling > 0:
            return cooling
        return PROBE_WAIT_SECONDS if self.probing else None

    def refusal(self) -> float | None:
        """The seconds until a call would be let through, while calls are refused; None when one would go now."""
        with self._lock:
            return self._wait(self.clock())

    def admit(self) -> Admission | float:
        """Let a call through (`PROBE` for the first one after the cool-down), or refuse it: the seconds to wait."""
        with self._lock:
            if self.opened_at is None:
                return Admission.CALL
            wait = self._wait(self.clock())
            if wait is not None:
                return wait
            self.probing = True
            return Admission.PROBE

    def succeeded(self) -> None:
        """The upstream answered: whatever came before, it works now."""
        with self._lock:
            was_open = self.opened_at is not None
            self.failures = 0
            self.opened_at = None
            self.probing = False
        if was_open:
            logger.info("the %s model provider answers again: calls go through", self.provider)

    def failed(self, *, probe: bool) -> None:
        """The call failed with an outage. A failed probe opens the breaker again for a whole cool-down; a call let
        through before it opened changes nothing while it is open."""
        with self._lock:
            now = self.clock()
            if probe:
                self.probing = False
                self.opened_at = now
            elif self.opened_at is None and self.threshold:
                self.failures += 1
                if self.failures < self.threshold:
                    return
                self.opened_at = now
            else:
                return
        logger.warning(
            "the %s model provider failed %s: no call goes to it for %g seconds",
            self.provider,
            "the probe call" if probe else f"{self.threshold} calls in a row",
            self.cool_down,
        )

    def abandoned(self, *, probe: bool) -> None:
        """The call ended without a verdict (its caller cancelled it): a probe frees the way for the next call."""
        if probe:
            with self._lock:
                self.probing = False


def provider_breaker(provider: str, base_url: str, *, failures: int, cool_down: float) -> Breaker:
    """The process's breaker of one upstream: a provider at a base URL (two gateways fail apart)."""
    return process_state(
        f"llm.breaker {provider} {base_url}",
        lambda: Breaker(provider=provider, failures=failures, cool_down=cool_down),
    )


def unavailable_message(provider: str, wait: float) -> str:
    return (
        f"The {provider} model provider is unavailable after repeated failures; "
        f"retry in {retry_after_header(wait)} seconds."
    )


def retry_after_header(wait: float) -> str:
    """`Retry-After`'s whole seconds for a wait, at least 1 (0 would invite a retry that is refused again)."""
    return str(max(1, math.ceil(wait)))
