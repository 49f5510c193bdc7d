"""Character card endpoints (DRF, sync): `GET /v1/personas/{id}/card` and `POST /v1/personas/import`."""

import json
import re
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from moonborn_site.api import error_response, owner_id
from moonborn_site.http import ApiError
from moonborn_site.openapi import LOCATION, error
from runs.hub import get_hub
from runs.streaming import give_back, reserve_slot

from .card_services import card_import_prepare, persona_card, persona_import
from .cards import (
    MAX_CARD_FILE_BYTES,
    MAX_CARD_JSON_BYTES,
    PNG_SIGNATURE,
    CardError,
    card_v2,
    parse_card_bytes,
    png_with_card,
)
from .models import Persona
from .serializers import PersonaSerializer
from .views import persona_json

FORMATS = ("json", "v2", "png")


def _filename(persona: Persona, ext: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", persona.name).strip("_") or persona.id
    return f"{stem}.{ext}"


class RawParser(BaseParser):
    """Accept any body; the view reads the raw bytes itself (a card is JSON or a PNG)."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return None


class IgnoreFormatNegotiation(DefaultContentNegotiation):
    """``?format=`` here picks the card's format, not DRF's renderer; errors are always JSON."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, first.media_type


class PersonaCardView(APIView):
    """`GET /v1/personas/{id}/card[?format=json|v2|png]`: the persona as a Character Card (V3 by default)."""

    content_negotiation_class = IgnoreFormatNegotiation

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format",
                str,
                OpenApiParameter.QUERY,
                enum=list(FORMATS),
                default=FORMATS[0],
                description="`json`: Character Card V3; `v2`: Character Card V2; `png`: a PNG with the card in it.",
            )
        ],
        responses={
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT, description="The card, as an attachment (`Content-Disposition`)."
            ),
            (200, "image/png"): OpenApiTypes.BINARY,
            409: error("The persona is not `ready` (`conflict`)."),
        },
    )
    def get(self, request: Request, persona_id: str) -> HttpResponse:
        fmt = request.query_params.get("format", "json")
        if fmt not in FORMATS:
            return error_response(400, f"format must be one of {', '.join(FORMATS)}.", details={"format": [fmt]})
        persona = Persona.objects.prefetch_related("steps").filter(owner_id=owner_id(request), pk=persona_id).first()
        if persona is None:
            return error_response(404)
        if persona.status != Persona.Status.READY:
            return error_response(409, f"Persona {persona.id} is {persona.status}; only a ready persona has a card.")
        card = persona_card(persona=persona)
        if fmt == "png":
            response = HttpResponse(png_with_card(card), content_type="image/png")
            response["Content-Disposition"] = f'attachment; filename="{_filename(persona, "png")}"'
            return response
        body = card_v2(card) if fmt == "v2" else card
        response = HttpResponse(
            json.dumps(body, ensure_ascii=False, indent=2), content_type="application/json; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="{_filename(persona, "json")}"'
        return response


class PersonaImportView(APIView):
    """`POST /v1/personas/import`: a card as the body (JSON, or a PNG with a `ccv3`/`chara` chunk) → 201 persona."""

    parser_classes = [RawParser]

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT, "image/png": OpenApiTypes.BINARY},
        responses={
            201: OpenApiResponse(PersonaSerializer, description="The imported persona."),
            400: error("Not a character card (`invalid_card`), or a part of it too large (`card_too_large`)."),
            413: error(
                f"The card is larger than {MAX_CARD_FILE_BYTES} bytes, or {MAX_CARD_JSON_BYTES} as JSON "
                "(`payload_too_large`)."
            ),
            503: error("The server is shutting down (`server_shutdown`)."),
        },
        parameters=[LOCATION],
    )
    def post(self, request: Request) -> HttpResponseBase | Response:
        django_request = request._request
        try:
            declared = int(django_request.headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        # A card is not an API body: a PNG carries an image as well, so the import has its own limits (in cards.py)
        # rather than MOONBORN_MAX_BODY_BYTES. The whole body past them is a 413; a part of the card past its
        # bound is a 400 `card_too_large`.
        if declared > MAX_CARD_FILE_BYTES:
            return error_response(413, f"A card may be at most {MAX_CARD_FILE_BYTES} bytes.")
        # read() rather than .body: .body enforces the small JSON body limit, a PNG card needs more.
        body = django_request.read(MAX_CARD_FILE_BYTES + 1)
        if len(body) > MAX_CARD_FILE_BYTES:
            return error_response(413, f"A card may be at most {MAX_CARD_FILE_BYTES} bytes.")
        if not body.startswith(PNG_SIGNATURE) and len(body) > MAX_CARD_JSON_BYTES:
            return error_response(413, f"A JSON card may be at most {MAX_CARD_JSON_BYTES} bytes.")
        if not body.strip():
            return error_response(400, "The request body must be a character card (JSON or PNG).")
        owner = owner_id(request)
        # An import parses and embeds on a request thread: it takes one of the owner's run slots while it works, so
        # a burst of imports is bounded like a burst of generations.
        hub = get_hub()
        try:
            slot = async_to_sync(reserve_slot)(hub, owner)
        except ApiError as exc:
            return exc.response()
        try:
            card = parse_card_bytes(body)
            prepared = card_import_prepare(card=card)
            persona = persona_import(owner_id=owner, prepared=prepared)
        except CardError as exc:
            return error_response(400, str(exc), code=exc.code)
        finally:
            async_to_sync(give_back)(hub, slot)
        response = Response(persona_json(owner_id=owner, persona_id=persona.id), status=status.HTTP_201_CREATED)
        response["Location"] = f"/v1/personas/{persona.id}"
        return response


persona_card_view = PersonaCardView.as_view()
persona_import_view = PersonaImportView.as_view()
