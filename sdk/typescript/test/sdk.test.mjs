// The TypeScript SDK against a real Moonborn server (started by tests/e2e/test_sdk_typescript.py).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { APIError, ConnectionError, Moonborn } from "../dist/index.js";
import { startCutProxy } from "./cutproxy.mjs";

const BASE_URL = process.env.MOONBORN_BASE_URL;
const KEY = process.env.MOONBORN_API_KEY;
const BOB_KEY = process.env.MOONBORN_API_KEY_BOB;
const STEPS = ["soul_draft", "lore_weave", "psyche_profile", "voice_print", "dialogue_seed", "card_compile"];
const TOKENS = Number(process.env.MOONBORN_REPLY_TOKENS);

const client = new Moonborn({ apiKey: KEY, baseUrl: BASE_URL, reconnectDelayMs: 50 });
let proxy;
let personaId;

before(async () => {
  assert.ok(BASE_URL && KEY && BOB_KEY && TOKENS, "run through tests/e2e/test_sdk_typescript.py");
  proxy = await startCutProxy(Number(new URL(BASE_URL).port));
  personaId = (await client.personas.create("A keeper of an old observatory")).id;
});

after(() => proxy.close());

async function lastMessage(sessionId) {
  const page = await client.chat.messages(sessionId);
  return page.results.at(-1);
}

async function waitForStatus(sessionId, status) {
  for (let i = 0; i < 200; i += 1) {
    const message = await lastMessage(sessionId);
    if (message.status === status) return message;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`the reply never became ${status}`);
}

function assertReply(events, stored) {
  // A generated persona has a lorebook: the reply consults it (one tool call) before its first token.
  assert.deepEqual(
    events.map((e) => e.type),
    ["message.started", "tool_start", "tool_end", ...Array(events.length - 4).fill("token"), "completed"],
  );
  assert.deepEqual(
    events.map((e) => e.id),
    events.map((_, i) => i + 1),
  );
  assert.equal(events[2].data.callId, events[1].data.callId);
  assert.equal(events.slice(3, -1).map((e) => e.data.delta).join(""), stored.content);
  assert.equal(events[0].data.messageId, stored.id);
  assert.equal(events.at(-1).data.messageId, stored.id);
  assert.equal(events.at(-1).data.driftScore, stored.driftScore);
}

test("createStream yields the six steps in order", async () => {
  const events = await client.personas.createStream("A cartographer of tides").all();
  assert.deepEqual(
    events.map((e) => e.type),
    ["pipeline.started", ...STEPS.flatMap(() => ["step.started", "step.completed"]), "pipeline.completed"],
  );
  assert.deepEqual(
    events.map((e) => e.id),
    Array.from({ length: 14 }, (_, i) => i + 1),
  );
  assert.deepEqual(
    events.filter((e) => e.type === "step.completed").map((e) => [e.data.step, e.data.model]),
    STEPS.map((step) => [step, "demo"]),
  );
  const id = events[0].data.personaId;
  assert.equal(events.at(-1).data.personaId, id);
  assert.equal((await client.personas.get(id)).status, "ready");
});

test("streamMessage yields tokens then completed, matching the stored reply", async () => {
  const session = await client.chat.sessions.create(personaId);
  const stream = client.chat.streamMessage(session.id, "What do you see tonight?");
  const events = [];
  for await (const event of stream) events.push(event);
  const stored = await lastMessage(session.id);
  assert.equal(stored.status, "completed");
  assertReply(events, stored);
  assert.equal(events.length, TOKENS + 4);
  const [start, end] = [events[1].data, events[2].data];
  assert.deepEqual(start, { callId: start.callId, tool: "lorebook", args: { turn: 1 } });
  assert.match(start.callId, /^call_[0-9a-z]+$/);
  assert.deepEqual([end.callId, end.tool, end.status], [start.callId, "lorebook", "ok"]);
  assert.deepEqual(Object.keys(end).sort(), ["callId", "durationMs", "result", "status", "tool"]);
  assert.ok(typeof end.durationMs === "number" && end.durationMs >= 0);
  // The history keeps the lorebook's result (without the state the server keeps for the next turn).
  assert.deepEqual(stored.lore, { ...end.result, historyDropped: 0 });
  assert.equal((await client.chat.messages(session.id)).results[0].lore, null);
  assert.equal(stream.text, stored.content);
  assert.equal(stream.location, `/v1/chat/sessions/${session.id}/messages/${stored.id}`);
});

test("JSON calls: create, sessions, sendMessage, history", async () => {
  const persona = await client.personas.create("A ferryman who sings", { name: "Oren" });
  assert.equal(persona.status, "ready");
  assert.equal(persona.name, "Oren");
  assert.deepEqual(
    persona.steps.map((s) => s.step),
    STEPS,
  );
  const session = await client.chat.sessions.create(persona.id);
  assert.equal(session.personaId, persona.id);
  const reply = await client.chat.sendMessage(session.id, "Which song first?");
  const history = (await client.chat.messages(session.id)).results;
  assert.deepEqual(
    history.map((m) => [m.role, m.status]),
    [
      ["user", "completed"],
      ["assistant", "completed"],
    ],
  );
  assert.equal(reply.messageId, history[1].id);
  assert.equal(reply.content, history[1].content);
  await client.chat.sessions.delete(session.id);
  await assert.rejects(client.chat.sessions.get(session.id), (error) => error instanceof APIError && error.code === "not_found");
});

test("aborting the signal cancels the reply on the server", async () => {
  const session = await client.chat.sessions.create(personaId);
  const controller = new AbortController();
  const seen = [];
  await assert.rejects(
    (async () => {
      for await (const event of client.chat.streamMessage(session.id, "Talk for a while.", { signal: controller.signal })) {
        seen.push(event);
        // message.started, the lorebook's tool_start and tool_end, then three tokens.
        if (seen.length === 6) controller.abort();
      }
    })(),
    (error) => error.name === "AbortError",
  );
  const stored = await waitForStatus(session.id, "cancelled");
  assert.deepEqual(
    seen.slice(0, 3).map((e) => e.type),
    ["message.started", "tool_start", "tool_end"],
  );
  const text = seen.slice(3).map((e) => e.data.delta).join("");
  assert.ok(stored.content.startsWith(text), `${stored.content} / ${text}`);
  assert.ok(stored.content.split(" ").length < TOKENS);
});

test("cancel() ends the stream with a cancelled error event", async () => {
  const session = await client.chat.sessions.create(personaId);
  const stream = client.chat.streamMessage(session.id, "Go on.");
  const seen = [];
  for await (const event of stream) {
    seen.push(event);
    // message.started, the lorebook's tool_start and tool_end, then two tokens.
    if (seen.length === 5) await stream.cancel();
  }
  assert.equal(seen.at(-1).type, "error");
  assert.equal(seen.at(-1).data.code, "cancelled");
  assert.deepEqual(
    seen.slice(0, 3).map((e) => e.type),
    ["message.started", "tool_start", "tool_end"],
  );
  assert.ok(seen.slice(3, -1).every((e) => e.type === "token"));
  const stored = await lastMessage(session.id);
  assert.equal(stored.status, "cancelled");
  assert.equal(stored.content, stream.text);
});

test("breaking out of the loop cancels the reply", async () => {
  const session = await client.chat.sessions.create(personaId);
  for await (const event of client.chat.streamMessage(session.id, "And then?")) {
    if (event.type === "token") break;
  }
  const stored = await waitForStatus(session.id, "cancelled");
  assert.ok(stored.content.split(" ").length < TOKENS);
});

test("a connection cut mid-reply resumes with Last-Event-ID: nothing lost, nothing repeated", async () => {
  const viaProxy = new Moonborn({ apiKey: KEY, baseUrl: proxy.url, reconnectDelayMs: 50 });
  const session = await viaProxy.chat.sessions.create(personaId);
  proxy.cutOn("on_disconnect=continue", 1500);
  const events = await viaProxy.chat.streamMessage(session.id, "Tell me everything.").all();
  assert.equal(proxy.cuts, 1);
  const stored = await lastMessage(session.id);
  assert.equal(stored.status, "completed");
  assertReply(events, stored);
  assert.equal(events.length, TOKENS + 4);
});

test("a connection cut mid-generation resumes the persona stream", async () => {
  const viaProxy = new Moonborn({ apiKey: KEY, baseUrl: proxy.url, reconnectDelayMs: 50 });
  proxy.cutOn("POST /v1/personas", 700);
  const before = proxy.cuts;
  const events = await viaProxy.personas.createStream("A beekeeper on a rooftop").all();
  assert.equal(proxy.cuts, before + 1);
  assert.deepEqual(
    events.map((e) => e.id),
    Array.from({ length: 14 }, (_, i) => i + 1),
  );
  assert.equal(events.at(-1).type, "pipeline.completed");
});

test("errors are typed and carry the api.md code", async () => {
  const stranger = new Moonborn({ apiKey: "mb_not_a_key", baseUrl: BASE_URL });
  await assert.rejects(stranger.personas.list(), (e) => e instanceof APIError && e.status === 401 && e.code === "authentication_failed");
  await assert.rejects(
    client.personas.createStream("").all(),
    (e) => e instanceof APIError && e.status === 400 && e.code === "validation_error" && "prompt" in e.details,
  );
  await assert.rejects(client.chat.streamMessage("ses_nope", "hi").all(), (e) => e instanceof APIError && e.status === 404 && e.code === "not_found");
  const bob = new Moonborn({ apiKey: BOB_KEY, baseUrl: BASE_URL });
  await assert.rejects(bob.personas.get(personaId), (e) => e instanceof APIError && e.code === "not_found");
  const nowhere = new Moonborn({ apiKey: "mb_x", baseUrl: "http://127.0.0.1:9" });
  await assert.rejects(nowhere.personas.list(), (e) => e instanceof ConnectionError);
});
