"""The official Durable Streams server conformance suite against our mount.

Real daphne, real PostgreSQL and Redis (the suite's second pass), the suite from npm
(@durable-streams/server-conformance-tests, pinned in tests/js/package-lock.json).
"""

from __future__ import annotations

import json

import pytest
from django.conf import settings

from .jsclients import run_node
from .procs import Daphne

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

#: The suite's size (0.3.6) and the tests it runs only for servers that offer the opt-in
#: subscription APIs (webhooks, pull-wake), which this server does not.
TOTAL = 338
OPT_IN_SKIPPED = 6


@pytest.mark.skipif(
    settings.DB_KIND != "postgres" or settings.LAYER_KIND != "redis",
    reason="the conformance suite runs on the PostgreSQL + Redis pass",
)
def test_conformance_suite_passes(tmp_path):
    server = Daphne(AGCH_DS_CONFORMANCE="1")
    report = tmp_path / "report.json"
    try:
        done = run_node(
            [
                "node_modules/.bin/vitest",
                "run",
                "--config",
                "vitest.config.mjs",
                "--reporter=json",
                f"--outputFile={report}",
                "durable-streams.conformance",
            ],
            {"CONFORMANCE_TEST_URL": f"http://127.0.0.1:{server.port}/streams"},
            timeout=600,
        )
    finally:
        server.stop()
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    failed = [
        f"{' > '.join(test['ancestorTitles'])} > {test['title']}: "
        f"{(test['failureMessages'] or [''])[0].splitlines()[0]}"
        for suite in result["testResults"]
        for test in suite["assertionResults"]
        if test["status"] == "failed"
    ]
    print(f"Durable Streams conformance: {result['numPassedTests']} of {result['numTotalTests']}")
    assert failed == [], "\n".join(failed) + "\n" + server.log_text()[-3000:]
    assert result["numTotalTests"] == TOTAL
    assert result["numPassedTests"] == TOTAL - OPT_IN_SKIPPED
