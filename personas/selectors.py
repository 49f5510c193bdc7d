"""Reads of personas that more than one caller makes: the drift statistics the API and the admin both show."""

from collections.abc import Iterable
from typing import NamedTuple

from django.db.models import Case, Count, F, FloatField, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Cast, Coalesce

from chat.models import Message

from .models import Persona

# The columns drift scoring reads and no list or API answer shows: the bulk of a persona row (the anchor vectors
# alone are ~17 KB, tier 1's as many again once its worker has run), left in the database by the pages.
SCORING_FIELDS = (
    "anchor_vectors",
    "calibration",
    "calibration_replies",
    "drift_samples",
    "tier1_anchor_vectors",
    "tier1_calibration",
)


def with_drift_stats(queryset: QuerySet[Persona]) -> QuerySet[Persona]:
    """Each persona with the drift statistics of its replies (assistant messages with a drift score):
    `reply_count`, `flagged_count`, `mean_drift` and `flagged_share` (None without replies).

    From the persona's counters (`PersonaDriftStats`), one narrow row joined by the persona's id: a page costs the
    same at a thousand messages as at millions. No aggregate over the messages, and no grouping of the wide persona
    rows.
    """
    replies = Coalesce(F("drift_stats__replies"), Value(0), output_field=IntegerField())
    flagged = Coalesce(F("drift_stats__flagged"), Value(0), output_field=IntegerField())
    return queryset.annotate(reply_count=replies, flagged_count=flagged).annotate(
        mean_drift=Case(
            When(reply_count__gt=0, then=F("drift_stats__drift_sum") / Cast(F("reply_count"), FloatField())),
            default=None,
            output_field=FloatField(),
        ),
        flagged_share=Case(
            When(reply_count__gt=0, then=Cast(F("flagged_count"), FloatField()) / Cast(F("reply_count"), FloatField())),
            default=None,
            output_field=FloatField(),
        ),
    )


class DriftCounts(NamedTuple):
    """A persona's replies counted from its messages: what its `PersonaDriftStats` row holds when it is right."""

    replies: int
    flagged: int
    drift_sum: float


def drift_counts(*, persona_ids: Iterable[str]) -> dict[str, DriftCounts]:
    """The drift statistics of these personas counted from their messages, by persona id (zero without replies).

    Every message of theirs is read: for repairs and checks of the counters, never for a page.
    """
    wanted = list(persona_ids)
    counted = {persona_id: DriftCounts(0, 0, 0.0) for persona_id in wanted}
    rows = (
        Message.objects.filter(session__persona_id__in=wanted, role=Message.Role.ASSISTANT, drift_score__isnull=False)
        .order_by()
        .values_list("session__persona_id")
        .annotate(replies=Count("pk"), flagged=Count("pk", filter=Q(flagged=True)), drift_sum=Sum("drift_score"))
    )
    for persona_id, replies, flagged, drift_sum in rows:
        counted[persona_id] = DriftCounts(replies, flagged, float(drift_sum or 0.0))
    return counted
