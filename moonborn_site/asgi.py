"""ASGI entry point: `uvicorn moonborn_site.asgi:application` (or daphne through runserver)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moonborn_site.settings")

application = get_asgi_application()
