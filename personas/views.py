"""Non-streaming persona endpoints (DRF, sync)."""

from django.db.models import QuerySet
from rest_framework import generics

from moonborn_site.api import owner_id

from .models import Persona
from .serializers import PersonaSerializer
from .services import persona_queryset


class PersonaList(generics.ListAPIView):
    """`GET /v1/personas`: the owner's personas, newest first."""

    serializer_class = PersonaSerializer

    def get_queryset(self) -> QuerySet[Persona]:
        return persona_queryset(owner_id=owner_id(self.request))


class PersonaDetail(generics.RetrieveAPIView):
    """`GET /v1/personas/{id}`."""

    serializer_class = PersonaSerializer
    lookup_url_kwarg = "persona_id"

    def get_queryset(self) -> QuerySet[Persona]:
        return persona_queryset(owner_id=owner_id(self.request))


persona_list = PersonaList.as_view()
persona_detail = PersonaDetail.as_view()


def persona_json(*, owner_id: int, persona_id: str) -> dict[str, object]:
    """The body of `GET /v1/personas/{id}` (camelCased by the caller's renderer)."""
    return dict(PersonaSerializer(persona_queryset(owner_id=owner_id).get(pk=persona_id)).data)
