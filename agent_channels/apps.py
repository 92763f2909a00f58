from django.apps import AppConfig


class AgentChannelsConfig(AppConfig):
    name = "agent_channels"
    verbose_name = "Agent channels"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agent_channels import checks  # noqa: F401  (registers the system checks)
        from agent_channels.runtime import checks as runtime_checks  # noqa: F401
