"""ASGI entry point: `uvicorn moonborn_site.asgi:application` (or daphne through runserver)."""

import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")

application = get_asgi_application()


def _warm_up() -> None:
    from chat.scoring import warm_up

    warm_up()


# Load the embedding model in the background, so the first persona or reply does not wait for it.
threading.Thread(target=_warm_up, name="moonborn-warm-up", daemon=True).start()
