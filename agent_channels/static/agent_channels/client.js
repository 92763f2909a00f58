/*! agent-channels client: follows one channel over the WebSocket protocol of docs/protocol.rst.
 *
 * Plain modern JavaScript, no build step. Two ways in:
 *   <agent-channel channel="order:42">…</agent-channel>     (a custom element)
 *   const ch = AgentChannels.follow(element, {channel: "order:42"});
 *
 * Everything that arrives from the server (model output, tool results, user input) is
 * untrusted: it is only ever put into the page with textContent, never parsed as HTML.
 */
(() => {
  "use strict";

  const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403]);
  const GONE = 4410;
  const MAX_BACKOFF_MS = 10000;
  const STATES = { live: "live", reconnecting: "reconnecting", offline: "offline", connecting: "connecting" };
  const CATEGORY_OF = (name) => {
    if (name.startsWith("message.")) return "messages";
    if (name.startsWith("tool.")) return "tools";
    if (name === "input.requested" || name === "input.received" || name === "client.input") return "input";
    if (name.startsWith("run.") || name === "client.interrupt" || name === "client.cancel") return "status";
    return "other";
  };
  const STATUS_LINES = {
    "run.queued": (d) => `Run of ${d.agent || "an agent"} queued`,
    "run.completed": () => "Run completed",
    "run.failed": (d) => `Run failed${d.error ? `: ${d.error}` : ""}`,
    "run.cancelled": () => "Run cancelled",
    "run.interrupted": () => "Run interrupted",
    "client.interrupt": () => "Interrupt requested",
    "client.cancel": () => "Cancel requested",
  };
  const RUN_STATUS = {
    "run.queued": "queued", "run.started": "running", "run.waiting": "waiting",
    "run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled",
    "run.interrupted": "interrupted",
  };
  const ACTIVE = new Set(["queued", "running", "waiting"]);

  /** Text for a value that may be anything JSON: strings as they are, the rest as JSON. */
  function asText(value) {
    if (typeof value === "string") return value;
    if (value && typeof value === "object" && typeof value.text === "string") return value.text;
    try { return JSON.stringify(value, null, 2); } catch { return String(value); }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function cookie(name) {
    const match = document.cookie.split("; ").find((part) => part.startsWith(`${name}=`));
    return match ? decodeURIComponent(match.slice(name.length + 1)) : "";
  }

  function storageKey(channel) { return `agent-channels:seq:${channel}`; }

  function readStored(channel) {
    try {
      const value = sessionStorage.getItem(storageKey(channel));
      return value === null ? null : Number(value);
    } catch { return null; }  // storage disabled (private mode, sandboxed frame)
  }

  function store(channel, seq) {
    try { sessionStorage.setItem(storageKey(channel), String(seq)); } catch { /* see readStored */ }
  }

  /**
   * Follow a channel and render it into `root`.
   *
   * root: the container; it may already hold the server-rendered state of
   *   {% agent_channel %} (then the client continues from its data-since).
   * opts: {channel, since, resume, events, canSend, debug, apiBase, wsBase}; each defaults
   *   to the root's data-* / attribute of the same name.
   * Returns a controller: {send, interrupt, cancel, startRun, close, get lastSeq, get state}.
   */
  function follow(root, opts = {}) {
    const attr = (name) => root.getAttribute(name) ?? root.getAttribute(`data-${name}`);
    const channel = opts.channel ?? attr("channel");
    if (!channel) throw new Error("agent-channels: no channel name given");
    const events = new Set((opts.events ?? attr("events") ?? "messages,tools,input,status")
      .split(",").map((s) => s.trim()).filter(Boolean));
    const canSendAttr = attr("can-send");
    let canSend = opts.canSend ?? (canSendAttr === null ? null : canSendAttr === "true");
    const debug = opts.debug ?? (attr("debug") !== null && attr("debug") !== "false");
    const apiBase = (opts.apiBase ?? attr("api-base") ?? "/agent-channels/")
      + `${encodeURIComponent(channel)}/`;
    const wsScheme = location.protocol === "https:" ? "wss:" : "ws:";
    const wsBase = opts.wsBase ?? attr("ws-base") ?? `${wsScheme}//${location.host}/ws/agent-channels/`;
    const socketUrl = `${wsBase}${encodeURIComponent(channel)}/`;

    // The server-rendered seq wins: the page already shows everything up to it.
    const rendered = opts.since ?? attr("since");
    let lastSeq = rendered !== null && rendered !== undefined && rendered !== ""
      ? Number(rendered)
      : (opts.resume ? readStored(channel) : null);

    root.classList.add("agch");
    const log = root.querySelector(".agch-log") || root.appendChild(el("ol", "agch-log"));
    if (!log.hasAttribute("aria-live")) log.setAttribute("aria-live", "polite");
    const header = root.querySelector(".agch-header") || root.insertBefore(el("div", "agch-header"), log);
    const runStatus = header.querySelector(".agch-run-status")
      || header.appendChild(el("span", "agch-run-status"));
    const presence = header.querySelector(".agch-presence")
      || header.insertBefore(el("span", "agch-presence"), header.querySelector(".agch-connection"));
    const connection = header.querySelector(".agch-connection")
      || header.appendChild(el("span", "agch-connection"));
    let raw = null;
    if (debug) {
      const details = root.querySelector(".agch-debug") || root.appendChild(el("details", "agch-debug"));
      if (!details.querySelector("summary")) details.appendChild(el("summary", "", "Raw events"));
      raw = details.querySelector(".agch-raw") || details.appendChild(el("ol", "agch-raw"));
    }

    const messages = new Map();
    const tools = new Map();
    const requests = new Map();
    root.querySelectorAll("[data-message-id]").forEach((n) => messages.set(n.dataset.messageId, n));
    root.querySelectorAll("[data-call-id]").forEach((n) => tools.set(n.dataset.callId, n));
    root.querySelectorAll("[data-input-seq]").forEach((n) => requests.set(n.dataset.inputSeq, n));

    let socket = null;
    let attempt = 0;
    let frameId = 0;
    let closed = false;
    let retryTimer = null;
    let chain = Promise.resolve();  // frames are handled one after another, refills included
    const pending = new Map();       // frame id -> {resolve, reject}

    function emit(type, detail) {
      root.dispatchEvent(new CustomEvent(`agch:${type}`, { detail, bubbles: true }));
    }

    function setState(state, text) {
      connection.dataset.state = state;
      connection.textContent = text || state;
      root.dataset.state = state;
      emit("state", { state, lastSeq });
    }

    function setRunStatus(status) {
      runStatus.dataset.status = status;
      runStatus.textContent = `Run ${status}`;
      root.dataset.runStatus = status;
      root.querySelectorAll("[data-agch-action]").forEach((button) => {
        if (button.dataset.agchAction !== "send") button.disabled = !ACTIVE.has(status);
      });
    }

    function append(node) {
      const nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      const empty = log.querySelector(".agch-empty");
      if (empty) empty.remove();
      log.appendChild(node);
      if (nearBottom) log.scrollTop = log.scrollHeight;
      return node;
    }

    function message(id, role) {
      let node = messages.get(id);
      if (!node) {
        node = el("li", `agch-item agch-message agch-message--${role} agch-message--streaming`);
        node.dataset.messageId = id;
        node.appendChild(el("div", "agch-bubble", ""));
        messages.set(id, node);
        append(node);
      }
      return node;
    }

    function bubble(node) { return node.querySelector(".agch-bubble") || node; }

    function tool(frame) {
      const d = frame.data || {};
      const key = String(d.call_id ?? `seq-${frame.seq}`);
      let node = tools.get(key);
      if (!node) {
        node = el("li", "agch-item agch-tool agch-tool--running");
        node.dataset.callId = key;
        const head = node.appendChild(el("div", "agch-tool-head"));
        head.appendChild(el("span", "agch-tool-name", asText(d.name ?? "tool")));
        head.appendChild(el("span", "agch-tool-state", "running"));
        node.appendChild(el("pre", "agch-tool-args", asText(d.arguments ?? "")));
        tools.set(key, node);
        append(node);
      }
      return node;
    }

    function answered(node) {
      node.classList.remove("agch-input-request--pending");
      node.classList.add("agch-input-request--answered");
      node.querySelectorAll("button").forEach((b) => { b.disabled = true; });
    }

    function inputRequest(frame) {
      const d = frame.data || {};
      const node = el("li", "agch-item agch-input-request agch-input-request--pending");
      node.dataset.inputSeq = String(frame.seq);
      node.appendChild(el("p", "agch-input-prompt", asText(d.prompt ?? "Input requested")));
      if (canSend && Array.isArray(d.choices) && d.choices.length) {
        const choices = node.appendChild(el("div", "agch-input-choices"));
        d.choices.forEach((choice) => {
          const button = choices.appendChild(el("button", "agch-button agch-choice", asText(choice)));
          button.type = "button";
          button.dataset.agchAnswer = asText(choice);
        });
      }
      requests.set(String(frame.seq), node);
      append(node);
    }

    /** Applies one event to the page; the same rules as agent_channels' server rendering. */
    function render(frame) {
      const d = frame.data || {};
      const name = frame.event;
      if (raw) raw.appendChild(el("li", "agch-raw-event", `#${frame.seq} ${name} ${JSON.stringify(d)}`));
      if (name in RUN_STATUS) setRunStatus(RUN_STATUS[name]);
      if (name.startsWith("run.") && name !== "run.waiting" && name !== "run.started") {
        // A run that ended answers no more questions.
        if (name !== "run.queued") requests.forEach(answered);
      }
      if (!events.has(CATEGORY_OF(name))) return;
      if (name === "message.delta") {
        const node = message(String(d.message_id), "assistant");
        bubble(node).textContent += asText(d.text ?? "");
      } else if (name === "message.completed" || name === "message.aborted") {
        const node = message(String(d.message_id), "assistant");
        // The deltas add up to the text; if they do not (a bug, a lost delta), show the truth.
        if (typeof d.text === "string" && bubble(node).textContent !== d.text) {
          bubble(node).textContent = d.text;
          node.classList.add("agch-message--repaired");
        }
        node.classList.remove("agch-message--streaming");
        node.classList.toggle("agch-message--aborted", name === "message.aborted");
      } else if (name === "client.input") {
        const node = message(`input-${frame.seq}`, "user");
        bubble(node).textContent = asText(d.data);
        node.classList.remove("agch-message--streaming");
      } else if (name === "tool.started" || name === "tool.completed") {
        const node = tool(frame);
        if (name === "tool.completed") {
          node.classList.remove("agch-tool--running");
          node.classList.add(d.ok === false ? "agch-tool--error" : "agch-tool--done");
          node.querySelector(".agch-tool-state").textContent = d.ok === false ? "failed" : "done";
          const result = node.querySelector(".agch-tool-result") || node.appendChild(el("pre", "agch-tool-result"));
          result.textContent = asText(d.result);
        }
      } else if (name === "input.requested") {
        inputRequest(frame);
      } else if (name === "input.received") {
        requests.forEach((node, seq) => { if (Number(seq) < frame.seq) answered(node); });
      } else if (name in STATUS_LINES) {
        const line = append(el("li", `agch-item agch-status agch-status--${name.replace(".", "-")}`,
          STATUS_LINES[name](d)));
        line.dataset.seq = String(frame.seq);
      }
    }

    function accept(frame) {
      if (lastSeq !== null && frame.seq <= lastSeq) return;  // a duplicate: already shown
      lastSeq = frame.seq;
      store(channel, lastSeq);
      root.dataset.since = String(lastSeq);
      render(frame);
      emit("event", frame);
      emit(frame.event, frame);
    }

    /** Reads the events after lastSeq up to `until` from the HTTP endpoint. */
    async function refill(until) {
      while (lastSeq !== null && lastSeq < until) {
        const limit = Math.min(1000, until - lastSeq);
        const response = await fetch(`${apiBase}events/?since=${lastSeq}&limit=${limit}`,
          { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error(`refill failed: HTTP ${response.status}`);
        const page = await response.json();
        if (!page.events.length) break;
        page.events.forEach(accept);
      }
    }

    function handle(frame) {
      if (frame.type === "hello") {
        attempt = 0;
        if (lastSeq === null) lastSeq = frame.since;
        if (canSend === null) canSend = Boolean(frame.can_send);
        root.dataset.canSend = String(Boolean(frame.can_send));
        setState(STATES.live, "live");
        emit("hello", frame);
      } else if (frame.type === "event") {
        if (frame.too_large) {
          // Too large for the socket: the server sent where to read it (the events endpoint).
          return refill(frame.seq);
        }
        if (lastSeq !== null && frame.seq > lastSeq + 1) {
          // A hole (never expected from the protocol, but cheap to heal): read it over HTTP.
          return refill(frame.seq - 1).then(() => accept(frame));
        }
        accept(frame);
      } else if (frame.type === "events" && Array.isArray(frame.events)) {
        // Catch-up in batches (?batch=1): the same event frames, several per message.
        let queued;
        for (const event of frame.events) {
          // In order; only once a hole needs a refill do the rest wait for it.
          queued = queued ? queued.then(() => handle(event)) : handle(event);
        }
        return queued;
      } else if (frame.type === "ack" || (frame.type === "error" && pending.has(frame.id))) {
        const waiter = pending.get(frame.id);
        pending.delete(frame.id);
        if (waiter) frame.type === "ack" ? waiter.resolve(frame) : waiter.reject(frame);
        if (frame.type === "error") emit("error", frame);
      } else if (frame.type === "presence") {
        const names = Array.isArray(frame.users) ? frame.users : [];
        presence.dataset.count = String(frame.count);
        presence.textContent = `${frame.count} watching${names.length ? `: ${names.join(", ")}` : ""}`;
        emit("presence", frame);
      } else if (frame.type === "error") {
        emit("error", frame);
      }
      return undefined;
    }

    function connect() {
      retryTimer = null;
      if (closed) return;
      setState(attempt ? STATES.reconnecting : STATES.connecting, attempt ? "reconnecting" : "connecting");
      const url = `${socketUrl}?presence=1&batch=1${lastSeq === null ? "" : `&since=${lastSeq}`}`;
      const ws = new WebSocket(url);
      socket = ws;
      ws.onmessage = (message) => {
        let frame;
        try { frame = JSON.parse(message.data); } catch { return; }
        chain = chain.then(() => handle(frame)).catch((error) => {
          // A failed refill: reconnecting with since=lastSeq replays what is missing.
          emit("error", { code: "refill_failed", message: String(error) });
          ws.close(4000);
        });
      };
      ws.onclose = (event) => {
        if (socket !== ws) return;
        socket = null;
        pending.forEach((waiter) => waiter.reject({ code: "disconnected", message: "The connection closed." }));
        pending.clear();
        if (closed) return setState(STATES.offline, "offline");
        if (FINAL_CLOSE_CODES.has(event.code)) {
          return setState(STATES.offline, event.code === 4401 ? "offline — log in to follow"
            : event.code === 4403 ? "offline — not allowed" : "offline");
        }
        if (event.code === GONE) {
          // The events after our seq were pruned: start again from what is retained.
          log.replaceChildren();
          messages.clear(); tools.clear(); requests.clear();
          lastSeq = null;
        }
        const delay = Math.min(MAX_BACKOFF_MS, 250 * 2 ** attempt++) * (0.75 + Math.random() / 2);
        setState(STATES.reconnecting, "reconnecting");
        retryTimer = setTimeout(connect, delay);
      };
    }

    /** Sends a control frame; resolves with the ack. Without a socket it uses HTTP. */
    function control(type, data) {
      const id = `c${++frameId}`;
      const frame = { type, id };
      if (data !== undefined) frame.data = data;
      if (socket && socket.readyState === WebSocket.OPEN) {
        return new Promise((resolve, reject) => {
          pending.set(id, { resolve, reject });
          socket.send(JSON.stringify(frame));
        });
      }
      return post(`${apiBase}messages/`, frame);
    }

    async function post(url, body) {
      const token = cookie("csrftoken")
        || (root.querySelector("[name=csrfmiddlewaretoken]") || {}).value || "";
      const response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) {
        const error = { code: answer.code || `http_${response.status}`, message: answer.message || response.statusText };
        emit("error", error);
        throw error;
      }
      return answer;
    }

    const api = {
      /** Input for the agent: a string becomes {text}, anything else is sent as it is. */
      send: (value) => control("input", typeof value === "string" ? { text: value } : value),
      interrupt: (data) => control("interrupt", data),
      cancel: (data) => control("cancel", data),
      /** POST runs/: resolves with {id, status}; rejects with {code, message}. */
      startRun: (agent, input, options = {}) => post(`${apiBase}runs/`, { agent, input, ...options }),
      /** Drops the socket; the client reconnects from lastSeq as after any network failure. */
      reconnect() { if (socket) socket.close(4000); },
      close() {
        closed = true;
        clearTimeout(retryTimer);
        window.removeEventListener("online", onOnline);
        if (socket) socket.close(1000);
        else setState(STATES.offline, "offline");
      },
      get lastSeq() { return lastSeq; },
      get state() { return connection.dataset.state; },
      get channel() { return channel; },
    };

    // The server-rendered controls (see agent_channels/channel.html) drive the same API.
    root.addEventListener("click", (event) => {
      const target = event.target.closest("button");
      if (!target || !root.contains(target)) return;
      const failed = (error) => emit("error", error);
      if (target.dataset.agchAnswer !== undefined) {
        api.send(target.dataset.agchAnswer).catch(failed);
      } else if (target.dataset.agchAction === "interrupt") {
        api.interrupt().catch(failed);
      } else if (target.dataset.agchAction === "cancel") {
        api.cancel().catch(failed);
      }
    });
    root.addEventListener("submit", (event) => {
      const form = event.target.closest(".agch-controls");
      if (!form) return;
      event.preventDefault();
      const field = form.elements.text;
      if (!field || !field.value.trim()) return;
      api.send(field.value).catch((error) => emit("error", error));
      field.value = "";
    });
    root.addEventListener("agch:error", (event) => {
      const notice = root.querySelector(".agch-notice");
      if (notice) notice.textContent = `${event.detail.code}: ${event.detail.message}`;
    });
    const onOnline = () => {
      // The network came back: try now instead of waiting out the backoff.
      if (retryTimer) { clearTimeout(retryTimer); attempt = 0; connect(); }
    };
    window.addEventListener("online", onOnline);

    if (runStatus.dataset.status) setRunStatus(runStatus.dataset.status);
    connect();
    return api;
  }

  /** <agent-channel channel="..." since="..." events="..." can-send debug>…</agent-channel> */
  class AgentChannelElement extends HTMLElement {
    connectedCallback() {
      if (!this.controller) this.controller = follow(this);
    }
    disconnectedCallback() {
      if (this.controller) { this.controller.close(); this.controller = null; }
    }
    send(value) { return this.controller.send(value); }
    interrupt(data) { return this.controller.interrupt(data); }
    cancel(data) { return this.controller.cancel(data); }
    startRun(agent, input, options) { return this.controller.startRun(agent, input, options); }
    reconnect() { return this.controller.reconnect(); }
    get lastSeq() { return this.controller ? this.controller.lastSeq : null; }
  }

  window.AgentChannels = { follow, asText, version: "1" };
  if (window.customElements && !customElements.get("agent-channel")) {
    customElements.define("agent-channel", AgentChannelElement);
  }
})();
