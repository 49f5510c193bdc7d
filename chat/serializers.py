from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from moonborn_site.http import StrictCharField
from moonborn_site.openapi import StreamErrorData

from .models import ChatSession, Message


class SessionCreateSerializer(serializers.Serializer):
    persona_id = StrictCharField(min_length=1, max_length=40)
    title = StrictCharField(required=False, allow_blank=True, max_length=200, default="")


# A message's length in characters (api.md: 1..8000); the serializer and `plain_message_content` both check it.
MESSAGE_MAX_CHARS = 8000


class MessageCreateSerializer(serializers.Serializer):
    content = StrictCharField(min_length=1, max_length=MESSAGE_MAX_CHARS, trim_whitespace=False)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value


def plain_message_content(data: dict[str, Any]) -> str | None:
    """The content `MessageCreateSerializer` would accept from `data`, when it plainly would; else None.

    Its checks, done directly on the request that starts most streams (~50 µs less of the event loop's time per
    start than running the serializer). None leaves the verdict, and any error message, to the serializer.
    """
    content = data.get("content")
    if (
        type(content) is not str
        or not 1 <= len(content) <= MESSAGE_MAX_CHARS
        or "\x00" in content
        or not content.strip()
    ):
        return None
    try:
        content.encode("utf-8")  # refuses a lone surrogate, as the serializer does
    except UnicodeEncodeError:
        return None
    return content


class ChatSessionSerializer(serializers.ModelSerializer):
    persona_id = serializers.CharField(read_only=True)
    persona_name = serializers.CharField(source="persona.name", read_only=True)

    class Meta:
        model = ChatSession
        fields = ["id", "persona_id", "persona_name", "title", "drift_ewma", "created_at", "updated_at"]


class LoreEntrySerializer(serializers.Serializer):
    entry = serializers.CharField(help_text="The entry's id in the book.")
    name = serializers.CharField()
    reason = serializers.DictField(
        help_text="Why it went in or was left out: `kind` (constant, key, secondary_key, recursion or decorator; "
        "budget, decorator, scan_depth, secondary_keys or recursion_limit) and the key, decorator or entry that did it."
    )


class LorebookResultSerializer(serializers.Serializer):
    """The `lorebook` tool's result: the entries inserted (in prompt order), the candidates skipped, their tokens."""

    activated = LoreEntrySerializer(many=True)
    skipped = LoreEntrySerializer(many=True)
    tokens = serializers.IntegerField(min_value=0)


class MessageLoreSerializer(serializers.Serializer):
    """The lorebook a reply consulted and the history messages its prompt's budget left out (the lorebook's fields
    are absent when none was consulted)."""

    activated = LoreEntrySerializer(many=True, required=False)
    skipped = LoreEntrySerializer(many=True, required=False)
    tokens = serializers.IntegerField(min_value=0, required=False)
    history_dropped = serializers.IntegerField(min_value=0)


class DriftTier1Serializer(serializers.Serializer):
    """Tier 1 of drift: the reply scored again by the full embedder after `completed`, or `skipped` (tier 0 was
    certain while tier 1 had a backlog)."""

    status = serializers.ChoiceField(choices=["scored", "skipped"])
    score = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    drifted = serializers.BooleanField(allow_null=True)
    scored_at = serializers.DateTimeField()


class MessageSerializer(serializers.ModelSerializer):
    session_id = serializers.CharField(read_only=True)
    drifted = serializers.BooleanField(source="flagged", read_only=True)
    drift_tier1 = serializers.SerializerMethodField()
    lore = serializers.SerializerMethodField()

    @extend_schema_field(MessageLoreSerializer(allow_null=True))
    def get_lore(self, message: Message) -> dict[str, Any] | None:
        """The lorebook consulted for a reply: entries activated and why, candidates skipped and why, their tokens,
        and how many history messages the prompt's budget left out; null when nothing was consulted. (The state
        its decorators carry to the next turn stays on the server.)"""
        if not message.lore:
            return None
        return {key: value for key, value in message.lore.items() if key != "state"}

    @extend_schema_field(DriftTier1Serializer(allow_null=True))
    def get_drift_tier1(self, message: Message) -> dict[str, Any] | None:
        """Tier 1 of drift (the full embedder, after `completed`): null until the tier-1 worker has taken the reply;
        then `scored` with its figures, or `skipped` (tier 0 was certain while tier 1 had a backlog)."""
        if message.tier1_scored_at is None:
            return None
        scored = message.tier1_score is not None
        return {
            "status": "scored" if scored else "skipped",
            "score": message.tier1_score,
            "threshold": message.tier1_threshold,
            "drifted": bool(message.tier1_flagged) if scored else None,
            "scored_at": message.tier1_scored_at,
        }

    class Meta:
        model = Message
        fields = [
            "id",
            "session_id",
            "index",
            "role",
            "content",
            "status",
            "model",
            "drift_score",
            "drift_threshold",
            "drifted",
            "drift_tier1",
            "lore",
            "error",
            "created_at",
            "completed_at",
        ]


class ReplySerializer(serializers.Serializer):
    """A finished reply (`POST …/messages` without streaming): the body `chat.views.reply_json` makes."""

    message_id = serializers.CharField()
    user_message_id = serializers.CharField(allow_null=True)
    session_id = serializers.CharField()
    content = serializers.CharField()
    status = serializers.ChoiceField(choices=Message.Status.choices)
    model = serializers.CharField()
    drift_score = serializers.FloatField(allow_null=True, min_value=0, max_value=1)
    drift_threshold = serializers.FloatField(allow_null=True)
    drifted = serializers.BooleanField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


# The events of a chat reply (chat.replies), in the order a run sends them: their `data`.


class MessageStartedData(serializers.Serializer):
    """The reply began (first): the assistant message being written and the user message it answers."""

    message_id = serializers.CharField()
    user_message_id = serializers.CharField()


class ToolStartData(serializers.Serializer):
    """A tool call began: today the `lorebook`, consulted before the first `token` when the persona has one."""

    call_id = serializers.CharField()
    tool = serializers.CharField()
    args = serializers.DictField(help_text="The tool's arguments (the lorebook's: `turn`).")


class ToolEndData(serializers.Serializer):
    """A tool call ended, with the `callId` of its `tool_start`."""

    call_id = serializers.CharField()
    tool = serializers.CharField()
    status = serializers.ChoiceField(choices=["ok", "error"])
    result = LorebookResultSerializer(help_text="The tool's result (the `lorebook` tool's, the only one today).")
    duration_ms = serializers.FloatField(min_value=0)


class TokenData(serializers.Serializer):
    """The next piece of the reply: every `delta`, in order, makes exactly the stored content."""

    delta = serializers.CharField()


class CompletedData(serializers.Serializer):
    """The reply is complete and stored, with its tier-0 drift score (terminal)."""

    message_id = serializers.CharField()
    drift_score = serializers.FloatField(min_value=0, max_value=1)
    drift_threshold = serializers.FloatField()
    drifted = serializers.BooleanField(help_text="`driftScore` > `driftThreshold`.")


CHAT_EVENTS: dict[str, type[serializers.Serializer]] = {
    "message.started": MessageStartedData,
    "tool_start": ToolStartData,
    "tool_end": ToolEndData,
    "token": TokenData,
    "completed": CompletedData,
    "error": StreamErrorData,
}
