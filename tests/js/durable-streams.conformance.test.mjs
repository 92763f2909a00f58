// The Durable Streams server conformance suite against CONFORMANCE_TEST_URL.
// Called from tests/test_durable_streams_conformance.py (a real daphne + PostgreSQL);
// calling runConformanceTests() here sidesteps the stock CLI, whose vitest run finds no
// test files because vitest skips node_modules (upstream issue #284).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.CONFORMANCE_TEST_URL
if (!baseUrl) throw new Error("CONFORMANCE_TEST_URL is required")

runConformanceTests({ baseUrl, longPollTimeoutMs: 2000 })
