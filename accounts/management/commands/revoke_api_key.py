from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey
from accounts.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke the API key with the given prefix (the 8 characters after `mb_`)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = options["prefix"].removeprefix("mb_").split("_")[0]
        try:
            api_key = api_key_revoke(prefix=prefix)
        except ApiKey.DoesNotExist:
            raise CommandError(f"No API key has the prefix {prefix!r}.") from None
        self.stdout.write(f"Revoked {api_key.prefix} ({api_key.owner}).")
