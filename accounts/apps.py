from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and usage"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the secret key check)
