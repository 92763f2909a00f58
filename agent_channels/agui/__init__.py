"""An AG-UI endpoint: AG-UI front ends (CopilotKit, assistant-ui, @ag-ui/client) run our agents.

Mount it with ``path("ag-ui/", include("agent_channels.agui.urls"))`` and install the
``agui`` extra (``ag-ui-protocol``). See docs/agui.rst.
"""
