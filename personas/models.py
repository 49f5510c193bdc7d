from django.conf import settings
from django.db import models

from moonborn_site.ids import new_persona_id

STEP_NAMES = ("soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile")


class Persona(models.Model):
    """A character card, the prompt it came from, its generation record and drift calibration."""

    class Status(models.TextChoices):
        GENERATING = "generating"
        READY = "ready"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.CharField(primary_key=True, max_length=40, default=new_persona_id, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personas")
    prompt = models.TextField()
    name = models.CharField(max_length=200, blank=True)
    requested_model = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.GENERATING, db_index=True)
    # Character Card V2/V3 `data` fields (name, description, personality, first_mes, …).
    card = models.JSONField(default=dict, blank=True)
    system_prompt = models.TextField(blank=True)
    post_history_instructions = models.TextField(blank=True)
    # Texts the drift scorer measures replies against, and their embeddings (float32, row-major).
    drift_anchors = models.JSONField(default=list, blank=True)
    anchor_vectors = models.BinaryField(blank=True, default=b"")
    embedding_model = models.CharField(max_length=100, blank=True)
    drift_threshold = models.FloatField(null=True, blank=True)
    calibration = models.JSONField(default=dict, blank=True)
    # In-character replies the persona's own model wrote at creation (the calibration call of `card_compile`): with
    # the anchors they are the texts drift is calibrated on, and `anchor_vectors` holds the vectors of both.
    drift_samples = models.JSONField(default=list, blank=True)
    # Replies an admin marked in character, which join the calibration set: message id -> base64 float32 vector.
    calibration_replies = models.JSONField(default=dict, blank=True)
    # Tier 1 of drift (the full embedder, run after `completed` by the tier-1 worker): the same texts' vectors and
    # calibration, made by the worker the first time it scores one of this persona's replies.
    tier1_anchor_vectors = models.BinaryField(blank=True, default=b"")
    tier1_embedding_model = models.CharField(max_length=100, blank=True)
    tier1_calibration = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name or self.id


class PersonaStep(models.Model):
    """One of the six pipeline steps of a persona: its output, model and duration."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    persona = models.ForeignKey(Persona, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=32, choices=[(n, n) for n in STEP_NAMES])
    position = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    output = models.JSONField(default=dict, blank=True)
    raw_output = models.TextField(blank=True)
    # Fields the parser had to fill from earlier steps because the model's answer lacked them.
    fallback_fields = models.JSONField(default=list, blank=True)
    model = models.CharField(max_length=200, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["persona", "name"], name="unique_step_per_persona")]

    def __str__(self) -> str:
        return f"{self.persona_id} {self.name}"


class PersonaDriftStats(models.Model):
    """The drift statistics of a persona's replies (its assistant messages with a drift score), kept as counters.

    Lists read them by the persona's id, whatever the number of messages: the chat services add a reply when its
    score is stored (`chat.services.message_complete`) and take away the replies of the sessions they delete, in the
    same transaction. A row of its own, narrow, so that these writes never rewrite the wide persona row nor change its
    `updated_at` (the version its cached voice is kept under). Made by the persona's first reply (or a recount,
    `personas.services.persona_drift_stats_recount`): a persona without one reads as zero.
    """

    persona = models.OneToOneField(Persona, on_delete=models.CASCADE, primary_key=True, related_name="drift_stats")
    replies = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    # The sum of the replies' drift scores: the mean is drift_sum / replies.
    drift_sum = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"{self.persona_id}: {self.replies} replies, {self.flagged} flagged"
