from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from accounts.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a user (creating the user if needed). Prints the key alone on the last line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label for the key.")

    def handle(self, *args: Any, **options: Any) -> None:
        api_key, key = api_key_create(username=options["username"], name=options["name"])
        self.stderr.write(f"Created key {api_key.prefix} for {api_key.owner}. It is shown once; store it now.")
        self.stdout.write(key)
