"""The official AG-UI client (@ag-ui/client's HttpAgent, from npm) against a real daphne
and a real Celery worker: the example chat and approval agents, end to end."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import Client

from agent_channels.models import Run, RunStatus
from agent_channels.runtime.backends import reset_backend

from .jsclients import run_node
from .procs import CeleryWorker, Daphne

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.integration,
    pytest.mark.skipif(
        settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"
    ),
]


@pytest.fixture
def queue(settings, llm):
    name = f"agch-{uuid.uuid4().hex[:8]}"
    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS,
        "RUN_BACKEND": "agent_channels.runtime.backends.CeleryBackend",
        "CELERY_QUEUE": name,
    }
    reset_backend()
    yield name
    reset_backend()


def test_http_agent_runs_chat_and_resumes_an_approval(queue, django_user_model, llm):
    user = django_user_model.objects.create_user("ui")
    client = Client()
    client.force_login(user)
    secret = _get_new_csrf_string()
    cookie = f"sessionid={client.cookies['sessionid'].value}; csrftoken={secret}"
    worker = CeleryWorker(queue)
    server = Daphne(AGCH_RUN_BACKEND="celery", AGCH_CELERY_QUEUE=queue)
    suffix = uuid.uuid4().hex[:8]
    try:
        done = run_node(
            ["node", "agui-client.mjs"],
            {
                "AGUI_URL": f"http://127.0.0.1:{server.port}/ag-ui/",
                "AGUI_COOKIE": cookie,
                "AGUI_CSRF": _mask_cipher_secret(secret),
                "AGUI_THREAD_SUFFIX": suffix,
                "AGUI_THREAD_PREFIX": f"user:{user.pk}/",
            },
            timeout=120,
        )
    finally:
        server.stop()
        worker.stop()
    assert done.returncode == 0, done.stderr + server.log_text()[-3000:] + worker.output()[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    chat = seen["chat"]
    assert chat["types"][0] == "RUN_STARTED" and chat["types"][-1] == "RUN_FINISHED"
    for kind in (
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
    ):
        assert kind in chat["types"], kind
    assert chat["result"] == {"text": "The result is 42."}
    # The client built the conversation from the events: the tool call, its result, the answer.
    assert {"role": "assistant", "content": None, "toolCalls": ["calculator"]} in chat["messages"]
    assert chat["messages"][-1] == {
        "role": "assistant",
        "content": "The result is 42.",
        "toolCalls": [],
    }
    assert llm.count == 2

    approval = seen["approval"]
    assert approval["first"][-1] == "RUN_FINISHED"
    assert approval["interrupts"][0]["reason"] == "input_required"
    assert approval["interrupts"][0]["message"] == "May I ship it? (yes/no)"
    assert approval["second"][0] == "RUN_STARTED" and approval["second"][-1] == "RUN_FINISHED"
    assert approval["result"]["approved"] is True
    assert approval["pendingAfter"] == 0
    assert approval["texts"] == ["I am about to ship it.", "Done: ship it."]
    run = Run.objects.get(channel__name=f"user:{user.pk}/node-approval-{suffix}")
    assert run.status == RunStatus.COMPLETED
