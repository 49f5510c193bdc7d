// The TypeScript SDK against scripted answers (a fetch of its own), no server: line splitting and where the key goes.
import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { ConnectionError, Moonborn, MoonbornError } from "../dist/index.js";

const KEY = "mb_test";
const BASE = "http://api.test";
const POST_URL = `${BASE}/v1/chat/sessions/ses_1/messages?on_disconnect=continue`;
const LOCATION = "/v1/chat/sessions/ses_1/messages/msg_1";
// U+2028, U+2029 and U+0085 raw inside the JSON, as a server may write them (JSON allows it), with every line
// ending SSE knows: CRLF, CR alone, LF.
const BODY = new TextEncoder().encode(
  "retry: 3000\r\n" +
    'id: 1\r\nevent: message.started\r\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\r\n\r\n' +
    'id: 2\revent: token\rdata: {"delta":"one\u2028two\u2029"}\r\r' +
    'id: 3\nevent: token\ndata: {"delta":"three\u0085four 😀\\r\\nfive"}\n\n' +
    'id: 4\nevent: completed\ndata: {"messageId":"msg_1","driftScore":0.25,"driftThreshold":0.5,"drifted":false}\n\n',
);
const TEXT = "one\u2028two\u2029three\u0085four 😀\r\nfive";

function chunks(body, size) {
  const out = [];
  for (let i = 0; i < body.length; i += size) out.push(body.subarray(i, i + size));
  return out;
}

function sse(parts, location = LOCATION) {
  const body = new ReadableStream({
    pull(controller) {
      if (parts.length === 0) controller.close();
      else controller.enqueue(parts.shift());
    },
  });
  return new Response(body, { headers: { "Content-Type": "text/event-stream; charset=utf-8", Location: location } });
}

function scripted(answer) {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url: String(url), method: init.method ?? "GET", headers: init.headers });
    return answer(String(url), init);
  };
  return { requests, client: new Moonborn({ apiKey: KEY, baseUrl: BASE, fetch, reconnectDelayMs: 0 }) };
}

for (const size of [1, 2, 7, BODY.length]) {
  test(`a reply with U+2028, U+2029 and U+0085 in its text reads whole (chunks of ${size} bytes)`, async () => {
    const { requests, client } = scripted(() => sse(chunks(BODY, size)));
    const stream = client.chat.streamMessage("ses_1", "hi");
    const events = await stream.all();
    assert.deepEqual(
      events.map((e) => [e.id, e.type]),
      [
        [1, "message.started"],
        [2, "token"],
        [3, "token"],
        [4, "completed"],
      ],
    );
    assert.deepEqual(
      events.filter((e) => e.type === "token").map((e) => e.data.delta),
      ["one\u2028two\u2029", "three\u0085four 😀\r\nfive"],
    );
    assert.equal(stream.text, TEXT);
    assert.equal(stream.location, LOCATION);
    assert.deepEqual(
      requests.map((r) => r.url),
      [POST_URL],
    );
  });
}

test("the lorebook's tool events and an event type the SDK does not know come through; the stream reads on", async () => {
  const lore = {
    activated: [{ entry: "3", name: "The lamp", reason: { kind: "constant" } }],
    skipped: [{ entry: "7", name: "Kraken", reason: { kind: "budget", tokens: 90, budget: 64, used: 40 } }],
    tokens: 12,
  };
  const body = new TextEncoder().encode(
    'id: 1\nevent: message.started\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\n\n' +
      'id: 2\nevent: tool_start\ndata: {"callId":"call_1","tool":"lorebook","args":{"turn":1}}\n\n' +
      `id: 3\nevent: tool_end\ndata: {"callId":"call_1","tool":"lorebook","status":"ok","result":${JSON.stringify(lore)},"durationMs":0.31}\n\n` +
      'id: 4\nevent: memory.recalled\ndata: {"items":[1,2]}\n\n' +
      'id: 5\nevent: token\ndata: {"delta":"Hello"}\n\n' +
      'id: 6\nevent: completed\ndata: {"messageId":"msg_1","driftScore":0.1,"driftThreshold":0.5,"drifted":false}\n\n',
  );
  const { client } = scripted(() => sse(chunks(body, 5)));
  const stream = client.chat.streamMessage("ses_1", "hi");
  const events = await stream.all();
  assert.deepEqual(
    events.map((e) => [e.id, e.type]),
    [
      [1, "message.started"],
      [2, "tool_start"],
      [3, "tool_end"],
      [4, "memory.recalled"],
      [5, "token"],
      [6, "completed"],
    ],
  );
  assert.deepEqual(events[1].data, { callId: "call_1", tool: "lorebook", args: { turn: 1 } });
  assert.deepEqual(events[2].data, { callId: "call_1", tool: "lorebook", status: "ok", result: lore, durationMs: 0.31 });
  assert.deepEqual(events[3].data, { items: [1, 2] });
  assert.equal(stream.text, "Hello");
  assert.equal(stream.done, true);
});

test("a blank line ended by a CR at the very end of the body still dispatches its event", async () => {
  const body = new TextEncoder().encode('id: 1\revent: completed\rdata: {"messageId":"msg_1","drifted":false}\r\r');
  const { client } = scripted(() => sse([body]));
  const events = await client.chat.streamMessage("ses_1", "hi").all();
  assert.deepEqual(events, [{ id: 1, type: "completed", data: { messageId: "msg_1", drifted: false } }]);
});

for (const location of [
  "https://evil.example/v1/chat/sessions/ses_1/messages/msg_1",
  "//evil.example/v1/chat/sessions/ses_1/messages/msg_1",
  "/\\evil.example/v1/chat/sessions/ses_1/messages/msg_1",
  `https://api.test${LOCATION}`,
  `http://api.test:8080${LOCATION}`,
  "javascript:alert(1)",
  "http://[::1",
]) {
  test(`a Location on another origin is refused before the key goes there: ${location}`, async () => {
    const started = new TextEncoder().encode('id: 1\nevent: message.started\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\n\n');
    // The stream ends before its terminal event: a client would resume at the Location.
    const { requests, client } = scripted((url, init) => (init.method === "POST" ? sse([started], location) : new Response(null, { status: 204 })));
    await assert.rejects(
      client.chat.streamMessage("ses_1", "hi").all(),
      (error) =>
        error instanceof MoonbornError &&
        !(error instanceof ConnectionError) &&
        error.message ===
          `Refusing the stream's Location ${JSON.stringify(location)}: it is not on http://api.test, and the client sends its API key only there.`,
    );
    assert.deepEqual(
      requests.map((r) => [r.url, r.headers.Authorization]),
      [[POST_URL, `Bearer ${KEY}`]],
    );
  });
}

const STARTED = new TextEncoder().encode('id: 1\nevent: message.started\ndata: {"messageId":"msg_1","userMessageId":"msg_0"}\n\n');
const COMPLETED = new TextEncoder().encode('id: 2\nevent: completed\ndata: {"messageId":"msg_1","drifted":false}\n\n');

for (const [location, resumed] of [
  [`${BASE}${LOCATION}`, `${BASE}${LOCATION}/events`],
  [`HTTP://API.test:80${LOCATION}`, `${BASE}${LOCATION}/events`],
  // Joined to the base URL as text, these would have moved the host: "http://api.test@evil.example/…".
  ["@evil.example/msg_1", `${BASE}/@evil.example/msg_1/events`],
  [".evil.example/msg_1", `${BASE}/.evil.example/msg_1/events`],
]) {
  test(`a Location on the base URL's origin is where the stream resumes: ${location}`, async () => {
    // The POST's stream ends before its terminal event; the resume at the Location brings the rest.
    const { requests, client } = scripted((url, init) => sse([init.method === "POST" ? STARTED : COMPLETED], location));
    const events = await client.chat.streamMessage("ses_1", "hi").all();
    assert.deepEqual(
      events.map((e) => [e.id, e.type]),
      [
        [1, "message.started"],
        [2, "completed"],
      ],
    );
    assert.deepEqual(
      requests.map((r) => [r.method, r.url, r.headers.Authorization, r.headers["Last-Event-ID"] ?? null]),
      [
        ["POST", POST_URL, `Bearer ${KEY}`, null],
        ["GET", resumed, `Bearer ${KEY}`, "1"],
      ],
    );
  });
}

test("the default fetch drops the key on a redirect off the base URL's origin", async () => {
  // The SDK leaves redirects to fetch, which (WHATWG Fetch) removes Authorization when the origin changes.
  const seen = [];
  const listen = (server) => new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));
  const other = http.createServer((req, res) => {
    seen.push(["other", req.headers.authorization ?? null]);
    res.writeHead(200, { "Content-Type": "application/json" }).end('{"results":[],"next":null,"previous":null}');
  });
  const otherPort = await listen(other);
  const api = http.createServer((req, res) => {
    seen.push(["api", req.headers.authorization ?? null]);
    res.writeHead(307, { Location: `http://localhost:${otherPort}/v1/personas` }).end();
  });
  const apiPort = await listen(api);
  try {
    const client = new Moonborn({ apiKey: KEY, baseUrl: `http://127.0.0.1:${apiPort}` });
    assert.deepEqual(await client.personas.list(), { results: [], next: null, previous: null });
    assert.deepEqual(seen, [
      ["api", `Bearer ${KEY}`],
      ["other", null],
    ]);
  } finally {
    api.close();
    other.close();
  }
});
