"""``{% load agent_channels %}``: render a live channel in any template.

``{% agent_channel_assets %}`` adds the client's script and stylesheet;
``{% agent_channel "order:42" %}`` renders the channel's current state (readable with
JavaScript off) inside an ``<agent-channel>`` element that the script keeps live.
See docs/templatetags.rst.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils.safestring import SafeString, mark_safe

from agent_channels.access import get_access_policy
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.channel.state import CATEGORIES, ChannelState, load_state

__all__ = ["agent_channel", "agent_channel_assets"]

register = template.Library()

#: The template names a project may override (in its own templates/agent_channels/).
CHANNEL_TEMPLATE = "agent_channels/channel.html"
ASSETS_TEMPLATE = "agent_channels/assets.html"

_PLACEHOLDER = "agch-placeholder"


def _api_base() -> str:
    """The URL prefix of the app's HTTP endpoints, wherever the project included them."""
    try:
        url = reverse("agent_channels:events", kwargs={"channel": _PLACEHOLDER})
    except NoReverseMatch:
        return "/agent-channels/"
    return url[: url.index(_PLACEHOLDER)]


def _categories(events: str | None) -> tuple[str, ...]:
    if not events or events == "all":
        return CATEGORIES
    chosen = tuple(part.strip() for part in events.split(",") if part.strip())
    unknown = [part for part in chosen if part not in CATEGORIES]
    if unknown:
        raise template.TemplateSyntaxError(
            f"agent_channel: unknown events {unknown!r}; choose from {', '.join(CATEGORIES)}."
        )
    return chosen


@register.simple_tag
def agent_channel_assets() -> SafeString:
    """The ``<link>`` and ``<script defer>`` tags of the client (once per page, in ``<head>``)."""
    return mark_safe(render_to_string(ASSETS_TEMPLATE))  # noqa: S308 - a template's own output


@register.simple_tag(takes_context=True)
def agent_channel(
    context: template.Context,
    channel: str,
    *,
    events: str | None = None,
    controls: bool = True,
    debug: bool = False,
    limit: int = 500,
    since: int = 0,
    template_name: str = CHANNEL_TEMPLATE,
) -> SafeString:
    """Render ``channel``'s current state, live once the client script runs.

    ``events``: a comma-separated subset of ``messages,tools,input,status`` (default all).
    ``controls``: show the input, interrupt and cancel controls, to users the access
    policy lets send. ``debug``: add a raw event list fed by the client. ``limit``: render at
    most this many of the newest items. ``since``: show only the events after this seq.
    """
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    categories = _categories(events)
    policy = get_access_policy()
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        raise template.TemplateSyntaxError(f"agent_channel: {exc}") from None
    can_read = policy.can_read(user, name)
    can_send = bool(can_read and policy.can_send(user, name))
    state = (
        load_state(name, categories=categories, limit=limit, since=int(since))
        if can_read
        else ChannelState(name)
    )
    values: dict[str, Any] = {
        "channel": name,
        "state": state,
        "can_read": can_read,
        "can_send": can_send,
        "show_controls": controls and can_send,
        "events": ",".join(categories),
        "debug": debug,
        "api_base": _api_base(),
    }
    return mark_safe(  # noqa: S308 - the template escapes every value it shows
        render_to_string(template_name, values, request=request)
    )
