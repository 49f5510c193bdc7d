"""Reads of personas that more than one caller makes: the drift statistics the API and the admin both show."""

from typing import Any

from django.db.models import Avg, Case, Count, F, FloatField, IntegerField, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Cast, Coalesce

from chat.models import Message

from .models import Persona


def with_drift_stats(queryset: QuerySet[Persona]) -> QuerySet[Persona]:
    """Each persona with the drift statistics of its replies (assistant messages with a drift score):
    `reply_count`, `flagged_count`, `mean_drift` and `flagged_share` (None without replies).

    Correlated subqueries, not a join grouped by the persona: a persona row is wide (its card, its anchors), and
    grouping every column of it by every message sorts that many wide rows; a join beside other joins (its steps)
    would also multiply the counts.
    """
    replies = (
        Message.objects.filter(session__persona=OuterRef("pk"), role=Message.Role.ASSISTANT, drift_score__isnull=False)
        .order_by()
        .values("session__persona")
    )

    def count(messages: QuerySet[Message, Any]) -> Coalesce:
        return Coalesce(Subquery(messages.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), Value(0))

    return queryset.annotate(
        reply_count=count(replies),
        flagged_count=count(replies.filter(flagged=True)),
        mean_drift=Subquery(replies.annotate(m=Avg("drift_score")).values("m"), output_field=FloatField()),
    ).annotate(
        flagged_share=Case(
            When(reply_count__gt=0, then=Cast(F("flagged_count"), FloatField()) / F("reply_count")),
            default=None,
            output_field=FloatField(),
        )
    )
