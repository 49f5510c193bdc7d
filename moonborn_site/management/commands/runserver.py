"""`manage.py runserver`: daphne's (ASGI, so streams stream), which refuses to start on a system check error."""

from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.core import checks


class Command(DaphneRunserver):
    def handle(self, *args: Any, **options: Any) -> None:
        # With the reloader the checks run in a thread of its child process, where an error prints a traceback and
        # leaves the process waiting for a file to change, neither serving nor exiting. Run here first, before the
        # reloader starts, an error (a missing secret key, missing embedder weights, ...) ends the command with
        # Django's report of it and exit status 1. Without the reloader, daphne's own checks do the same.
        if (
            options["use_reloader"]
            and not options["skip_checks"]
            and any(issue.is_serious() and not issue.is_silenced() for issue in checks.run_checks())
        ):
            self.check(display_num_errors=True)
        super().handle(*args, **options)
