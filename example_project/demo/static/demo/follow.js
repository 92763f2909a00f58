// Follows one channel: resumes by seq after every disconnect, renders model output as text
// (never as HTML: it is untrusted), and sends input / interrupt / cancel frames.
(() => {
  "use strict";
  const name = JSON.parse(document.getElementById("channel-name").textContent);
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;
  const log = document.getElementById("log");
  const status = document.getElementById("status");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socketUrl = `${scheme}://${location.host}/ws/agent-channels/${encodeURIComponent(name)}/`;
  const apiUrl = `/agent-channels/${encodeURIComponent(name)}/`;
  const FINAL_CLOSE_CODES = new Set([4400, 4401, 4403, 4410]);
  const messages = new Map();
  let lastSeq = null;
  let socket = null;
  let attempt = 0;
  let frameId = 0;

  function line(className, text) {
    const div = document.createElement("div");
    div.className = className;
    div.textContent = text;
    log.append(div);
    log.scrollTop = log.scrollHeight;
    return div;
  }

  function messageElement(id) {
    let element = messages.get(id);
    if (!element) {
      element = line("msg", "");
      messages.set(id, element);
    }
    return element;
  }

  function render(frame) {
    const data = frame.data || {};
    if (frame.event === "message.delta") {
      messageElement(data.message_id).textContent += data.text;
    } else if (frame.event === "message.completed" || frame.event === "message.aborted") {
      const element = messageElement(data.message_id);
      // The deltas already add up to the text; if they do not (a bug), show the truth.
      if (element.textContent !== data.text) {
        element.textContent = data.text;
        element.classList.add("repaired");
      }
      element.classList.toggle("aborted", frame.event === "message.aborted");
    } else {
      line("event", `#${frame.seq} ${frame.event} ${JSON.stringify(data)}`);
    }
    log.scrollTop = log.scrollHeight;
  }

  function connect() {
    socket = new WebSocket(lastSeq === null ? socketUrl : `${socketUrl}?since=${lastSeq}`);
    socket.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type === "hello") {
        attempt = 0;
        if (lastSeq === null) lastSeq = frame.since;
        status.textContent = `live — resumed after seq ${frame.since}, newest ${frame.last_seq}`;
      } else if (frame.type === "event") {
        if (frame.seq <= lastSeq) return;  // already shown
        lastSeq = frame.seq;
        render(frame);
      } else if (frame.type === "error") {
        line("error", `${frame.code}: ${frame.message}`);
      }
    };
    socket.onclose = (event) => {
      if (FINAL_CLOSE_CODES.has(event.code)) {
        status.textContent = `closed (${event.code}); reload the page`;
        return;
      }
      const delay = Math.min(10000, 250 * 2 ** attempt++);
      status.textContent = `disconnected; reconnecting in ${delay} ms from seq ${lastSeq}`;
      setTimeout(connect, delay);
    };
  }

  function send(type, data) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      line("error", "not connected; try again in a moment");
      return;
    }
    const frame = { type, id: ++frameId };
    if (data !== undefined) frame.data = data;
    socket.send(JSON.stringify(frame));
  }

  document.querySelectorAll("[data-start]").forEach((button) => {
    button.addEventListener("click", async () => {
      const response = await fetch(`${apiUrl}runs/`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
        body: button.dataset.start,
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        line("error", `${body.code || response.status}: ${body.message || "could not start"}`);
      }
    });
  });
  document.querySelectorAll("[data-control]").forEach((button) => {
    button.addEventListener("click", () => send(button.dataset.control));
  });
  document.getElementById("drop").addEventListener("click", () => socket && socket.close(4000));
  document.getElementById("input").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = event.target.elements.text;
    send("input", { text: field.value });
    field.value = "";
  });
  connect();
})();
