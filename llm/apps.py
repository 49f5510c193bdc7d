from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "llm"
    verbose_name = "Model providers"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the provider settings check)
