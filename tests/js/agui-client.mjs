// Drives our AG-UI endpoint with the official client, @ag-ui/client's HttpAgent.
// Called from tests/test_agui_client.py against a real daphne and Celery worker; prints
// what the client saw as one JSON object.
import { HttpAgent } from "@ag-ui/client"

const base = process.env.AGUI_URL
const headers = { Cookie: process.env.AGUI_COOKIE, "X-CSRFToken": process.env.AGUI_CSRF }
const suffix = process.env.AGUI_THREAD_SUFFIX
// Thread ids are channel names: a plain user's must be in their namespace ("user:<pk>/").
const prefix = process.env.AGUI_THREAD_PREFIX ?? ""

function recorder() {
  const seen = []
  return { seen, subscriber: { onEvent: ({ event }) => { seen.push(event.type) } } }
}

const out = {}

// chat: a tool call, then the answer, streamed as text.
const chat = new HttpAgent({
  url: `${base}chat/`,
  headers,
  threadId: `${prefix}node-chat-${suffix}`,
  initialMessages: [{ id: "u1", role: "user", content: "please calculate 6*7" }],
})
const chatEvents = recorder()
const chatResult = await chat.runAgent({}, chatEvents.subscriber)
out.chat = {
  types: chatEvents.seen,
  result: chatResult.result,
  messages: chat.messages.map((m) => ({ role: m.role, content: m.content ?? null,
    toolCalls: (m.toolCalls ?? []).map((c) => c.function.name) })),
}

// approval: the agent asks; the run ends in an interrupt; the client resumes it.
const approval = new HttpAgent({
  url: `${base}approval/`,
  headers,
  threadId: `${prefix}node-approval-${suffix}`,
  initialMessages: [{ id: "u1", role: "user", content: "go" }],
})
const first = recorder()
await approval.runAgent({ forwardedProps: { input: { action: "ship it" } } }, first.subscriber)
const interrupts = approval.pendingInterrupts.map((i) => ({ id: i.id, reason: i.reason, message: i.message }))
const second = recorder()
const resumed = await approval.runAgent(
  { resume: [{ interruptId: interrupts[0].id, status: "resolved", payload: { text: "yes" } }] },
  second.subscriber,
)
out.approval = {
  first: first.seen,
  interrupts,
  second: second.seen,
  result: resumed.result,
  pendingAfter: approval.pendingInterrupts.length,
  texts: approval.messages.filter((m) => m.role === "assistant").map((m) => m.content),
}
console.log(JSON.stringify(out))
