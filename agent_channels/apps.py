from django.apps import AppConfig


class AgentChannelsConfig(AppConfig):
    name = "agent_channels"
    verbose_name = "Agent channels"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The glue layer wires the runtime to the channel: the surfaces send control
        # through agent_channels.channel.control and never import the runtime.
        from agent_channels import checks  # noqa: F401  (registers the system checks)
        from agent_channels.channel.control import control_sent
        from agent_channels.durable_streams import checks as stream_checks  # noqa: F401
        from agent_channels.runtime import checks as runtime_checks  # noqa: F401
        from agent_channels.runtime.control import on_control_sent

        control_sent.connect(on_control_sent, dispatch_uid="agent_channels.runtime")
