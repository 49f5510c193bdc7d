import contextlib
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from chat.tier1 import Tier1Worker


class Command(BaseCommand):
    help = (
        "Score replies with tier-1 drift (the full embedder) from the database queue, in the foreground. Each server "
        "process starts one (--parent: end with that process); run it yourself beside servers started with "
        "MOONBORN_DRIFT_TIER1_WORKER=false."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--parent", type=int, help="the server process this worker serves; end when it ends")

    def handle(self, *args: Any, **options: Any) -> None:
        worker = Tier1Worker(parent=options["parent"])
        if options["parent"] is None:
            self.stdout.write(f"tier-1 drift worker {worker.worker_id}: waiting for replies (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            worker.run()
