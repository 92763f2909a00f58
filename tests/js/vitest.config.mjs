import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["*.test.mjs"],
    // The suite's own concurrency (5 files' worth of tests at once) against one daphne.
    maxConcurrency: 5,
    testTimeout: 30000,
  },
})
