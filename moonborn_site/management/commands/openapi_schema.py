"""`manage.py openapi_schema`: write the API's OpenAPI schema to docs/openapi.json, the bytes /v1/openapi.json serves.

`--check` only compares, and fails when the committed file is not what the code generates.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from moonborn_site.schema import SCHEMA_FILE, generate_schema, schema_json


class Command(BaseCommand):
    help = "Write the OpenAPI schema of /v1/ to docs/openapi.json (or check that it is up to date)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--file", type=Path, default=SCHEMA_FILE, help="Where to write it (default: %(default)s).")
        parser.add_argument("--check", action="store_true", help="Write nothing; fail if the file differs.")

    def handle(self, *args: Any, file: Path, check: bool, **options: Any) -> None:
        generated = schema_json(generate_schema())
        if check:
            if not file.is_file() or file.read_bytes() != generated:
                raise CommandError(f"{file} is not the generated schema: run `python manage.py openapi_schema`.")
            self.stdout.write(f"{file} is up to date.")
            return
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(generated)
        self.stdout.write(f"Wrote {file}.")
