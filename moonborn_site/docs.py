"""The API's documentation, served by the app itself: the OpenAPI schema, Swagger UI and Redoc.

The two UIs' files come from drf-spectacular-sidecar under STATIC_URL. A proxy in front (README, "Production") serves
them from STATIC_ROOT after `collectstatic`, and `runserver` with DEBUG on from the package; otherwise (uvicorn on
its own) `sidecar_asset` does, so the pages work the same everywhere and never load anything from a CDN.
"""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import drf_spectacular_sidecar
from django.http import FileResponse, Http404, HttpRequest, HttpResponseBase
from django.views.decorators.http import require_safe
from drf_spectacular.renderers import OpenApiJsonRenderer2
from drf_spectacular.views import SpectacularJSONAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from .schema import schema_json

SCHEMA_URL_NAME = "openapi-schema"


class SchemaRenderer(OpenApiJsonRenderer2):
    """`application/json`, with the bytes `manage.py openapi_schema` commits."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return schema_json(data)


# The pages load nothing from elsewhere: Redoc's bundle still asks a CDN for its attribution logo, which this refuses
# (the logo then hides itself). Their scripts are files, so no inline script runs (Swagger UI's start-up script is the
# split view's `?script`); the UIs style elements inline and draw icons from data: URLs, and Redoc works in a blob:
# worker.
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "worker-src 'self' blob:",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def own_files_only(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """`view`, its pages sent with `DOCS_CONTENT_SECURITY_POLICY`."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = DOCS_CONTENT_SECURITY_POLICY
        return response

    return wrapper


schema_view = SpectacularJSONAPIView.as_view(renderer_classes=[SchemaRenderer])
swagger_view = own_files_only(SpectacularSwaggerSplitView.as_view(url_name=SCHEMA_URL_NAME))
# Redoc's stock page links Google Fonts; this one has no outside link (its fonts fall back to the system's).
redoc_view = own_files_only(SpectacularRedocView.as_view(url_name=SCHEMA_URL_NAME, template_name="openapi/redoc.html"))

SIDECAR_ROOT = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar"
SIDECAR_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}
# Every file that can be served, found once: a request's path is looked up here, never joined to a directory.
SIDECAR_FILES = {
    path.relative_to(SIDECAR_ROOT).as_posix(): path
    for path in sorted(SIDECAR_ROOT.rglob("*"))
    if path.suffix in SIDECAR_TYPES and path.is_file()
}


@require_safe
def sidecar_asset(request: HttpRequest, name: str) -> FileResponse:
    """One of Swagger UI's or Redoc's own files."""
    path = SIDECAR_FILES.get(name)
    if path is None:
        raise Http404("No such file.")
    response = FileResponse(path.open("rb"), content_type=SIDECAR_TYPES[path.suffix])
    response["Cache-Control"] = "public, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response
