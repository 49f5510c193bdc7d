// Read one Moonborn stream with one real SSE client and print what it dispatched, as JSON.
//   node read.mjs <client> <url> [json body]
// client: eventsource (GET only: the resume endpoint) · eventsource-parser · fetch-event-source · seed ·
//         moonborn-sdk (sdk/typescript's build; POST of a chat message only)
// Env: MOONBORN_API_KEY. Output: {"events": [{"id", "event", "data"}...], ...client facts}.
import { EventSource } from "eventsource";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { fetchEventSource } from "@microsoft/fetch-event-source";

import { Moonborn } from "../../sdk/typescript/dist/index.js";
import { seedReadLoop } from "./seed-loop.mjs";

const [client, url, body] = process.argv.slice(2);
const auth = { Authorization: `Bearer ${process.env.MOONBORN_API_KEY}` };
const TERMINAL = new Set(["pipeline.completed", "completed", "error"]);
// Every type the server sends: an EventSource dispatches a named event only to its own listeners.
const TYPES = [
  "pipeline.started",
  "step.started",
  "step.completed",
  "pipeline.completed",
  "message.started",
  "tool_start",
  "tool_end",
  "token",
  "completed",
  "error",
];

function post() {
  return fetch(url, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json", Accept: "text/event-stream" },
    body,
  });
}

async function withEventSource() {
  // The WHATWG EventSource: named events reach only their own listeners, so listen for every type
  // and for "message" too (where a phantom unnamed event would land). It is not closed on the
  // terminal event: it reconnects with Last-Event-ID and the server's 204 must stop it.
  const events = [];
  let opens = 0;
  const source = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...auth } }),
  });
  // A server `event: error` is a MessageEvent on the "error" listener; the connection's own errors
  // arrive there too, as plain Events without data, and are not stream events.
  const record = (event) => {
    if ("data" in event) events.push({ id: event.lastEventId, event: event.type, data: event.data });
  };
  for (const type of [...TYPES, "message"]) source.addEventListener(type, record);
  source.addEventListener("open", () => (opens += 1));
  let timer;
  const closed = await new Promise((resolve) => {
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) resolve(true);
    });
    timer = setTimeout(() => resolve(false), 20000);
  });
  clearTimeout(timer);
  source.close();
  return { events, opens, closedByServer: closed };
}

async function withParser() {
  const response = await post();
  const events = [];
  let retry = null;
  const stream = response.body
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream({ onRetry: (ms) => (retry = ms) }));
  for await (const event of stream) events.push({ id: event.id, event: event.event ?? "message", data: event.data });
  return { events, retry, status: response.status };
}

async function withFetchEventSource() {
  // A browser library: in Node it needs `window` for its timers and a `document` to (un)register its
  // visibility listener on, even with openWhenHidden.
  globalThis.window ??= globalThis;
  globalThis.document ??= Object.assign(new EventTarget(), { hidden: false });
  const events = [];
  const controller = new AbortController();
  let opened = 0;
  await fetchEventSource(url, {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json", Accept: "text/event-stream" },
    body,
    openWhenHidden: true,
    signal: controller.signal,
    fetch,
    async onopen(response) {
      opened = response.status;
    },
    onmessage(event) {
      events.push({ id: event.id, event: event.event || "message", data: event.data });
    },
    onclose() {
      // The server ends the stream after the terminal event; returning (not throwing) means no retry.
    },
    onerror(error) {
      throw error;
    },
  });
  return { events, status: opened };
}

async function withSeedLoop() {
  const events = [];
  let text = "";
  await seedReadLoop(url, auth, body, (event, data, id) => events.push({ id, event, data }), (delta) => (text += delta));
  return { events, text };
}

async function withSdk() {
  // The SDK is given what a caller has: the base URL, the session id and the message's text.
  const { origin, pathname } = new URL(url);
  const sessionId = pathname.split("/")[4];
  const client = new Moonborn({ apiKey: process.env.MOONBORN_API_KEY, baseUrl: origin });
  const stream = client.chat.streamMessage(sessionId, JSON.parse(body).content);
  const events = [];
  for await (const event of stream) events.push({ id: String(event.id), event: event.type, data: JSON.stringify(event.data) });
  return { events, text: stream.text };
}

const readers = {
  eventsource: withEventSource,
  "eventsource-parser": withParser,
  "fetch-event-source": withFetchEventSource,
  seed: withSeedLoop,
  "moonborn-sdk": withSdk,
};

const result = await readers[client]();
process.stdout.write(JSON.stringify(result));
