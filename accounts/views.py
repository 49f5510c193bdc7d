"""`GET /v1/usage`: the owner's metered runs."""

from django.db.models import QuerySet
from rest_framework import generics, serializers

from moonborn_site.api import RecentRunsCursorPagination, owner_id

from .models import UsageRecord


class UsageRecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = UsageRecord
        fields = [
            "kind",
            "run_id",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "status",
            "started_at",
            "ended_at",
        ]


class UsageList(generics.ListAPIView):
    serializer_class = UsageRecordSerializer
    pagination_class = RecentRunsCursorPagination

    def get_queryset(self) -> QuerySet[UsageRecord]:
        return UsageRecord.objects.filter(owner_id=owner_id(self.request))


usage_list = UsageList.as_view()
