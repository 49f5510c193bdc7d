"""The plain-Django reference: the bare-ASGI reference's stream from a minimal Django async view.

    python -m uvicorn bench.reference_django:application --port 8002 --log-level warning --no-access-log

What the issue calls "a minimal Django async view on uvicorn" (the "plain Django view" column of bench/RESULTS.md):
Django's stock ASGI handler, no middleware, no apps, no database, and one async view returning a
`StreamingHttpResponse` over an async generator. It is what wiring a model's stream into Django by hand starts
from, and what Moonborn must beat. The query (`tokens`, `delay_ms`) and the frames are `bench/reference_asgi.py`'s:
`retry: 3000`, `message.started`, one `token` event per word, `completed`, one `send()` per event.
"""

import asyncio
from collections.abc import AsyncIterator

from django.conf import settings

# Settings of its own, not Moonborn's: the process serves this view and nothing else.
settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="plain-django-reference",  # nothing is signed: no session, no cookie
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

# The frames of the other reference, so that both write the same bytes.
from bench.reference_asgi import WORDS, frame  # noqa: E402


async def stream(request: HttpRequest) -> StreamingHttpResponse:
    tokens = int(request.GET.get("tokens", "200"))
    delay = float(request.GET.get("delay_ms", "0")) / 1000.0

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n" + frame(1, "message.started", {"messageId": "msg_reference"})
        for i in range(tokens):
            if delay:
                await asyncio.sleep(delay)
            yield frame(i + 2, "token", {"delta": WORDS[i % len(WORDS)]})
        yield frame(tokens + 2, "completed", {"messageId": "msg_reference", "driftScore": 0.5})

    # Django cancels the response's iteration when the client leaves (its handler listens for the disconnect).
    response = StreamingHttpResponse(frames(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


urlpatterns = [path("", stream), path("stream", stream)]

application = get_asgi_application()
