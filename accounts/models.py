from django.conf import settings
from django.db import models


class ApiKey(models.Model):
    """A program's credential. Only a SHA-256 of the key is stored; the prefix identifies it."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.owner})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class UsageRecord(models.Model):
    """One metered run: a persona generation or a chat reply."""

    class Kind(models.TextChoices):
        PERSONA = "persona"
        CHAT = "chat"

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        FAILED = "failed"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    run_id = models.CharField(max_length=40, db_index=True)
    provider = models.CharField(max_length=40)
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["owner", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.run_id} {self.status}"


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` an owner sent with a POST, and what that POST created."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys")
    key = models.CharField(max_length=255)
    kind = models.CharField(max_length=16)
    request_hash = models.CharField(max_length=64)
    # The persona or assistant message created; empty while the first request is creating it.
    resource_id = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "key"], name="unique_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.owner_id} {self.key}"
