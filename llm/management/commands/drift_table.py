from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from llm.checks import weights_error
from llm.embeddings import MiniLMEmbedder
from llm.static_embeddings import ensure_table


class Command(BaseCommand):
    help = (
        "Build the tier-0 drift table from the packaged MiniLM into MOONBORN_CACHE_DIR, and the embedded "
        "generic-assistant texts of both tiers (nothing to do for what is there already)."
    )
    # An install step: it builds what one check asks for, and runs before a deployment's settings are complete.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        error = weights_error()
        if error is not None:
            # Tier 1's generic-assistant texts are embedded with those weights below, and the table is built from them.
            raise CommandError(error)
        try:
            path = ensure_table(settings.MOONBORN_CACHE_DIR)
        except LookupError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Tier-0 drift table: {path}")
        from chat.scoring import generic_vectors, tier0, tier1

        generic_vectors(tier0())
        embedder = tier1()
        if isinstance(embedder, MiniLMEmbedder):  # an embeddings server is asked when a process first needs it
            generic_vectors(embedder)
            self.stdout.write(f"Tier-1 generic-assistant vectors ({embedder.model_id}): cached")
