/*
 * A run's admin page while the run is active: the {% agent_channel %} element follows it
 * live. Once the run is over (its run.completed / failed / cancelled / interrupted event, or
 * a page rendered just after it ended), the page fetches itself again and swaps in what the
 * server renders for a finished run: the fields, the actions and the whole history. No
 * reload; the element's socket closes when it leaves the document.
 *
 * The fetched page is Django's own, autoescaped; nothing from the stream is parsed as HTML.
 */
(function () {
  "use strict";
  const ENDS = new Set(["run.completed", "run.failed", "run.cancelled", "run.interrupted"]);
  const ACTIVE = new Set(["", "queued", "running", "waiting"]);
  const RETRIES = 20;

  async function refresh(attempt) {
    try {
      const response = await fetch(window.location.href, {
        credentials: "same-origin", headers: { Accept: "text/html" },
      });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("content");
        const current = document.getElementById("content");
        // The run's row may be saved a moment after its last event: until the server
        // renders a finished run, try again (a bounded number of times).
        if (fresh && current && !doc.getElementById("agch-run-live")) {
          current.replaceWith(document.adoptNode(fresh));
          // The title and the breadcrumbs name the run's status too.
          const crumbs = document.querySelector(".breadcrumbs");
          const freshCrumbs = doc.querySelector(".breadcrumbs");
          if (crumbs && freshCrumbs) crumbs.replaceWith(document.adoptNode(freshCrumbs));
          document.title = doc.title;
          document.dispatchEvent(new CustomEvent("agch:run-page-refreshed"));
          return;
        }
      }
    } catch (error) {
      // Offline for a moment: the retry below tries again.
    }
    if (attempt < RETRIES) setTimeout(() => refresh(attempt + 1), 250 * (attempt + 1));
  }

  function start() {
    const live = document.getElementById("agch-run-live");
    if (!live) return;
    const runId = live.dataset.run;
    let refreshing = false;
    const over = () => {
      if (refreshing) return;
      refreshing = true;
      refresh(0);
    };
    live.addEventListener("agch:event", (event) => {
      const frame = event.detail;
      if (ENDS.has(frame.event) && String(frame.run) === runId) over();
    });
    const element = live.querySelector("agent-channel");
    if (element && !ACTIVE.has(element.dataset.runStatus || "")) over();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
