"""Non-streaming chat endpoints (DRF, sync)."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from moonborn_site.api import Conflict, InOrderCursorPagination, owner_id
from moonborn_site.openapi import LOCATION, error
from personas.models import Persona

from . import services
from .models import ChatSession, Message
from .serializers import ChatSessionSerializer, MessageSerializer, SessionCreateSerializer


@extend_schema_view(
    post=extend_schema(
        request=SessionCreateSerializer,
        responses={
            201: ChatSessionSerializer,
            404: error("No persona of the caller's has this `personaId` (`not_found`)."),
            409: error("The persona is not `ready` (`conflict`)."),
        },
        parameters=[LOCATION],
    )
)
class SessionList(generics.ListCreateAPIView):
    """`GET /v1/chat/sessions` (newest first) and `POST` to open one with a ready persona."""

    serializer_class = ChatSessionSerializer

    def get_queryset(self) -> QuerySet[ChatSession]:
        return ChatSession.objects.filter(owner_id=owner_id(self.request)).select_related("persona")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not isinstance(request.data, dict):
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
        incoming = SessionCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        try:
            session = services.chat_session_create(owner_id=owner_id(request), **incoming.validated_data)
        except Persona.DoesNotExist:
            raise NotFound(f"No persona {incoming.validated_data['persona_id']}.") from None
        except services.ChatConflict as exc:
            raise Conflict(str(exc)) from None
        body = ChatSessionSerializer(session).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": f"/v1/chat/sessions/{session.id}"})


class SessionDetail(generics.RetrieveAPIView):
    serializer_class = ChatSessionSerializer
    lookup_url_kwarg = "session_id"

    def get_queryset(self) -> QuerySet[ChatSession]:
        return ChatSession.objects.filter(owner_id=owner_id(self.request)).select_related("persona")


class MessageList(generics.ListAPIView):
    """`GET /v1/chat/sessions/{id}/messages`: the conversation in order, partial replies included."""

    serializer_class = MessageSerializer
    pagination_class = InOrderCursorPagination

    def get_queryset(self) -> QuerySet[Message]:
        session_id = self.kwargs["session_id"]
        if not ChatSession.objects.filter(owner_id=owner_id(self.request), pk=session_id).exists():
            raise NotFound(f"No chat session {session_id}.")
        return Message.objects.filter(session_id=session_id)


class MessageDetail(generics.RetrieveAPIView):
    serializer_class = MessageSerializer
    lookup_url_kwarg = "message_id"

    def get_queryset(self) -> QuerySet[Message]:
        return Message.objects.filter(session__owner_id=owner_id(self.request), session_id=self.kwargs["session_id"])


session_list = SessionList.as_view()
session_detail = SessionDetail.as_view()
message_list = MessageList.as_view()
message_detail = MessageDetail.as_view()


def message_json(*, owner_id: int, session_id: str, message_id: str) -> dict[str, Any]:
    message = Message.objects.get(session__owner_id=owner_id, session_id=session_id, pk=message_id)
    return dict(MessageSerializer(message).data)


def reply_json(*, owner_id: int, session_id: str, message_id: str) -> dict[str, Any]:
    """The body of a created reply (`POST …/messages` without streaming)."""
    message = Message.objects.get(session__owner_id=owner_id, session_id=session_id, pk=message_id)
    user_message_id = (
        Message.objects.filter(session_id=session_id, index=message.index - 1).values_list("id", flat=True).first()
    )
    return {
        "message_id": message.id,
        "user_message_id": user_message_id,
        "session_id": session_id,
        "content": message.content,
        "status": message.status,
        "model": message.model,
        "drift_score": message.drift_score,
        "drift_threshold": message.drift_threshold,
        "drifted": message.flagged,
        "created_at": message.created_at,
        "completed_at": message.completed_at,
    }
