from django.conf import settings
from django.db import models

from moonborn_site.ids import new_message_id, new_session_id
from personas.models import Persona


class ChatSession(models.Model):
    id = models.CharField(primary_key=True, max_length=40, default=new_session_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions")
    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="chat_sessions")
    title = models.CharField(max_length=200, blank=True)
    # Exponentially weighted average of the session's reply drift scores.
    drift_ewma = models.FloatField(null=True, blank=True)
    # Consecutive scored replies with the average over the persona's threshold, and when that first lasted
    # SUSTAINED_DRIFT_TURNS (kept afterwards: the session did drift, even if it recovered).
    drift_streak = models.PositiveIntegerField(default=0)
    sustained_drift_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title or self.id


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    class Review(models.TextChoices):
        IN_CHARACTER = "in_character", "in character"
        OUT_OF_CHARACTER = "out_of_character", "out of character"

    id = models.CharField(primary_key=True, max_length=40, default=new_message_id, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    # Position in the session, 0-based; the order of the conversation.
    index = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED, db_index=True)
    model = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    drift_score = models.FloatField(null=True, blank=True, db_index=True)
    drift_threshold = models.FloatField(null=True, blank=True)
    flagged = models.BooleanField(default=False, db_index=True)
    drift_components = models.JSONField(default=dict, blank=True)
    # The lorebook consulted for this reply: the entries that went into its prompt and why, the candidates left out
    # and why, and the state its decorators carry to the next turn (chat.lorebook). Empty without a lorebook.
    lore = models.JSONField(default=dict, blank=True)
    # Tier 1: the same reply scored again by the full embedder, after `completed` (chat.tier1); null until then.
    tier1_score = models.FloatField(null=True, blank=True)
    tier1_threshold = models.FloatField(null=True, blank=True)
    tier1_flagged = models.BooleanField(null=True, blank=True, db_index=True)
    tier1_components = models.JSONField(default=dict, blank=True)
    tier1_scored_at = models.DateTimeField(null=True, blank=True)
    # An admin's verdict on a reply (the flag queue); in-character verdicts join the persona's calibration.
    review = models.CharField(max_length=20, choices=Review.choices, blank=True, default="", db_index=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "index"]
        constraints = [models.UniqueConstraint(fields=["session", "index"], name="unique_message_position")]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


class DriftJob(models.Model):
    """A reply waiting for its tier-1 drift score: the durable queue of the tier-1 worker (chat.tier1).

    Made with the reply, in the turn's transaction, so a reply whose process dies before its end is scored all the
    same once it has ended (or been marked failed); taken only once the reply is no longer streaming. A worker claims
    a batch until `claimed_until`; a claim that runs out (its worker died) is taken again.
    """

    message = models.OneToOneField(Message, on_delete=models.CASCADE, primary_key=True, related_name="drift_job")
    created_at = models.DateTimeField()
    claimed_until = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="chat_driftjob_created")]

    def __str__(self) -> str:
        return f"tier-1 job {self.message_id}"
