"""Request bodies capped where they enter: before authentication, before Django reads (or spools) a byte.

Django reads a whole request body before any view runs, and spools it to a temporary file past
FILE_UPLOAD_MAX_MEMORY_SIZE, writing from the event loop: one large unauthenticated POST would fill the disk and
stall every open stream. Here a body is refused with 413 by its declared `Content-Length`, or as soon as the bytes
received pass the cap (a chunked body declares none). Card imports have their own, larger cap; every other request
has MOONBORN_MAX_BODY_BYTES, the largest body the API and the forms accept anyway.
"""

import json
from typing import Any

from django.conf import settings

from personas.cards import MAX_CARD_FILE_BYTES

from .api import error_body
from .middleware import API_PREFIX

Scope = dict[str, Any]
Message = dict[str, Any]

# Where a character card is uploaded: the API's import, and the admin's (a multipart form around the file).
CARD_PATHS = frozenset({"/v1/personas/import", "/admin/personas/persona/import-card/"})
# A multipart form's envelope around the card: boundaries, headers, the CSRF token.
FORM_ENVELOPE_BYTES = 64 * 1024


def body_cap(path: str) -> int:
    """The most bytes a request body to `path` may have."""
    if path in CARD_PATHS:
        return MAX_CARD_FILE_BYTES + FORM_ENVELOPE_BYTES
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it declares none (the server refuses a malformed one)."""
    for name, value in scope["headers"]:
        if name.lower() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


async def refuse(scope: Scope, send: Any, cap: int) -> None:
    """413, in the API's JSON error body under /v1/, plain text elsewhere; the connection closes after it."""
    message = f"The request body is larger than {cap} bytes."
    if scope["path"].startswith(API_PREFIX):
        body = json.dumps(error_body("payload_too_large", message)).encode()
        content_type = b"application/json"
    else:
        body, content_type = message.encode(), b"text/plain; charset=utf-8"
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyCap:
    """ASGI wrapper: a request body past its cap ends the request with 413 before the application reads it whole.

    The application sees a body past the cap as a client that left (`http.disconnect`), so it answers nothing and
    stores nothing; then this answers 413. Every application here reads a body whole before it answers, so one that
    was cut off has sent nothing yet: `send` is not wrapped (it carries every token of every stream).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = body_cap(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > cap:
            await refuse(scope, send, cap)
            return
        received = 0
        over = False

        async def capped_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, capped_receive, send)
        if over:
            await refuse(scope, send, cap)
