// Moonborn web UI: plain ES module, no build step, no third-party code.
// Streams are read with fetch + a reader (EventSource cannot POST); a dropped stream resumes from the
// resume endpoint with Last-Event-ID, so no text is repeated or lost.

const TERMINAL = new Set(["pipeline.completed", "completed", "error"]);
const MAX_RECONNECTS = 8;

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : "";
}

function headers(method, extra = {}) {
  const out = { Accept: "application/json", ...extra };
  if (method !== "GET") out["X-CSRFToken"] = csrfToken();
  return out;
}

async function errorFrom(response) {
  let message = `The server answered ${response.status}.`;
  let code = "http_error";
  try {
    const body = await response.json();
    message = body.error.message;
    code = body.error.code;
  } catch {
    // Not our JSON error body (e.g. a proxy page): keep the status sentence.
  }
  const error = new Error(message);
  error.code = code;
  error.status = response.status;
  return error;
}

async function api(method, url, body) {
  const init = { method, credentials: "same-origin", headers: headers(method) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

// Parse an SSE body per the WHATWG rules: comments ignored, blank line dispatches when data was seen.
async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = "";
  let type = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) yield { id, event: type || "message", data: data.join("\n") };
          type = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "id") id = val;
        else if (field === "event") type = val;
        else if (field === "data") data.push(val);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follow one run to its terminal event, resuming after drops. Returns the terminal {event, data}.
async function followRun(openFirst, onEvent) {
  let lastId = 0;
  let location = null;
  let failures = 0;
  let response = await openFirst();
  for (;;) {
    if (response) {
      if (response.status === 204) return null;
      if (!response.ok) throw await errorFrom(response);
      location = response.headers.get("Location") || location;
      try {
        for await (const frame of readEvents(response)) {
          const data = JSON.parse(frame.data);
          lastId = Number(frame.id) || lastId;
          failures = 0;
          onEvent(frame.event, data, lastId);
          if (TERMINAL.has(frame.event)) return { event: frame.event, data };
        }
      } catch (error) {
        if (error.name === "AbortError") throw error;
        // A network error mid-stream: fall through and resume.
      }
    }
    failures += 1;
    if (!location || failures > MAX_RECONNECTS) throw new Error("The connection was lost.");
    setStatus(`Reconnecting (attempt ${failures})…`);
    await sleep(Math.min(250 * failures, 2000));
    try {
      response = await fetch(`${location}/events`, {
        credentials: "same-origin",
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(lastId) },
      });
    } catch {
      response = null;
    }
  }
}

function showError(message) {
  const box = document.getElementById("page-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) {
  const status = document.getElementById("reply-status");
  if (status) status.textContent = text;
}

async function startChat(personaId, button) {
  button.disabled = true;
  try {
    const session = await api("POST", "/v1/chat/sessions", { personaId });
    window.location.assign(`/chat/${session.id}`);
  } catch (error) {
    showError(error.message);
    button.disabled = false;
  }
}

function wireChatButtons() {
  for (const button of document.querySelectorAll("button.start-chat[data-persona-id]")) {
    button.addEventListener("click", () => startChat(button.dataset.personaId, button));
  }
}

// ---- New persona: six steps light up live, then the card.

function initPersonaNew() {
  const form = document.getElementById("persona-form");
  const bar = document.getElementById("progress-bar");
  form.addEventListener("submit", async (submit) => {
    submit.preventDefault();
    showError("");
    const prompt = form.prompt.value.trim();
    const name = form.name.value.trim();
    if (!prompt) {
      showError("Describe the persona first.");
      form.prompt.focus();
      return;
    }
    form.generate.disabled = true;
    document.getElementById("progress").hidden = false;
    document.getElementById("result").hidden = true;
    for (const item of document.querySelectorAll("#steps li")) setStep(item, "pending", "waiting", "");
    bar.value = 0;
    let personaId = null;
    try {
      const body = name ? { prompt, name } : { prompt };
      const terminal = await followRun(
        () =>
          fetch("/v1/personas?stream=true", {
            method: "POST",
            credentials: "same-origin",
            headers: headers("POST", { Accept: "text/event-stream", "Content-Type": "application/json" }),
            body: JSON.stringify(body),
          }),
        (event, data) => {
          const item = data.step ? document.querySelector(`#steps li[data-step="${data.step}"]`) : null;
          if (event === "pipeline.started") personaId = data.personaId;
          else if (event === "step.started" && item) setStep(item, "running", "running…", "");
          else if (event === "step.completed" && item) {
            setStep(item, "done", "done", `${data.durationMs} ms · ${data.model}`);
            bar.value = document.querySelectorAll('#steps li[data-state="done"]').length;
            bar.textContent = `${bar.value} of 6`;
          }
        },
      );
      if (!terminal || terminal.event === "error") {
        throw new Error(terminal ? terminal.data.error : "The generation ended without a result.");
      }
      showCard(await api("GET", `/v1/personas/${personaId || terminal.data.personaId}`));
    } catch (error) {
      for (const item of document.querySelectorAll('#steps li[data-state="running"]')) setStep(item, "failed", "failed", "");
      showError(error.message);
    } finally {
      form.generate.disabled = false;
    }
  });
}

function setStep(item, state, label, meta) {
  item.dataset.state = state;
  item.querySelector(".step-state").textContent = label;
  item.querySelector(".step-meta").textContent = meta;
}

function showCard(persona) {
  const card = persona.card || {};
  document.getElementById("card-name").textContent = persona.name;
  document.getElementById("card-description").textContent = card.description || "";
  document.getElementById("card-personality").textContent = card.personality || "";
  document.getElementById("card-scenario").textContent = card.scenario || "";
  document.getElementById("card-first").textContent = card.firstMes || "";
  document.getElementById("card-threshold").textContent =
    persona.driftThreshold == null ? "not calibrated" : persona.driftThreshold.toFixed(2);
  const chat = document.getElementById("card-chat");
  chat.textContent = `Chat with ${persona.name}`;
  chat.dataset.personaId = persona.id;
  chat.onclick = () => startChat(persona.id, chat);
  const result = document.getElementById("result");
  result.hidden = false;
  chat.focus();
}

// ---- Chat: history, typewriter replies, Stop, drift badges, resume.

function messageItem(role) {
  const item = document.createElement("li");
  item.className = `msg ${role}`;
  item.dataset.role = role;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : document.getElementById("chat").dataset.personaName;
  const text = document.createElement("p");
  text.className = "text";
  const meta = document.createElement("span");
  meta.className = "meta";
  item.append(who, text, meta);
  document.getElementById("history").append(item);
  return item;
}

function driftBadge(item, score, threshold, drifted) {
  const meta = item.querySelector(".meta");
  meta.textContent = "";
  if (score == null) return;
  const badge = document.createElement("span");
  badge.className = drifted ? "badge drifted" : "badge";
  badge.textContent = `${drifted ? "drifted " : ""}drift ${score.toFixed(2)} / ${threshold.toFixed(2)}`;
  badge.title = drifted ? "Out of character: above the persona's threshold" : "In character";
  meta.append(badge);
  item.dataset.drifted = String(Boolean(drifted));
}

// ---- Lorebook: the `lorebook` tool a reply calls before its first token, and what it put into the prompt.

const quote = (text) => `“${text}”`;
const quoteAll = (keys) => (Array.isArray(keys) ? keys : []).map(quote).join(", ");
const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function loreEntryName(record) {
  return record.name ? record.name : `entry ${record.entry}`;
}

// Why an entry went into the prompt, or was left out. The API camelCases keys (scanDepth), the stream does not.
function loreReason(reason) {
  const r = reason || {};
  const key = r.key == null ? "" : `key ${quote(r.key)}`;
  const found = Array.isArray(r.secondary) && r.secondary.length ? quoteAll(r.secondary) : "";
  switch (r.kind) {
    case "key":
      return Array.isArray(r.additional) && r.additional.length ? `${key} and ${quoteAll(r.additional)}` : key;
    case "secondary_key":
      if (r.logic === "NOT_ANY") return `${key}, no secondary key`;
      if (r.logic === "NOT_ALL") return `${key}, not every secondary key`;
      return found ? `${key} and ${found}` : key;
    case "constant":
      return "always on";
    case "recursion":
      return `via entry ${r.via}${key ? `, ${key}` : ""}`;
    case "decorator": {
      if (r.decorator === "@@additional_keys") return `${key} but none of ${quoteAll(r.keys)} (@@additional_keys)`;
      if (r.decorator === "@@exclude_keys") return `${key} but ${quote(r.excluded)} excludes it (@@exclude_keys)`;
      const value = r.value == null ? "" : ` ${r.value}`;
      const turn = r.turn == null ? "" : ` (turn ${r.turn})`;
      return `decorator ${r.decorator}${value}${turn}`;
    }
    case "budget":
      return `over the token budget (${plural(r.tokens, "token", "tokens")}; ${r.used} of ${r.budget} used)`;
    case "scan_depth":
      return `${key} only beyond the last ${plural(r.scan_depth ?? r.scanDepth, "message", "messages")}`;
    case "secondary_keys":
      return `${key} but secondary keys not met (${r.logic}, ${found ? `found ${found}` : "none found"})`;
    case "recursion_limit":
      return `${key} via entry ${r.via}, past the recursion limit`;
    default:
      return String(r.kind || "unknown");
  }
}

function loreList(records, className) {
  const list = document.createElement("ul");
  list.className = `lore-list ${className}`;
  for (const record of records) {
    const row = document.createElement("li");
    row.dataset.entry = String(record.entry);
    const name = document.createElement("span");
    name.className = "lore-name";
    name.textContent = loreEntryName(record);
    const why = document.createElement("span");
    why.className = "lore-why";
    why.textContent = loreReason(record.reason);
    row.append(name, " — ", why);
    list.append(row);
  }
  return list;
}

// The collapsible "Lore: 2 entries" line, from a `tool_end` result or a stored message's `lore`.
function loreDetails(lore) {
  const activated = Array.isArray(lore.activated) ? lore.activated : [];
  const skipped = Array.isArray(lore.skipped) ? lore.skipped : [];
  const details = document.createElement("details");
  details.className = "tool lore";
  details.dataset.entries = String(activated.length);
  const summary = document.createElement("summary");
  summary.textContent =
    `Lore: ${activated.length ? plural(activated.length, "entry", "entries") : "no entries"}` +
    (skipped.length ? ` · ${skipped.length} skipped` : "");
  details.append(summary);
  if (activated.length) {
    details.append(loreList(activated, "activated"));
  } else {
    const none = document.createElement("p");
    none.className = "lore-note";
    none.textContent = "No entry went into the prompt.";
    details.append(none);
  }
  if (skipped.length) {
    const head = document.createElement("p");
    head.className = "lore-note";
    head.textContent = "Left out:";
    details.append(head, loreList(skipped, "skipped"));
  }
  const notes = [];
  if (typeof lore.tokens === "number") notes.push(`${plural(lore.tokens, "token", "tokens")} of lore in the prompt`);
  if (lore.historyDropped) {
    notes.push(`${plural(lore.historyDropped, "earlier message", "earlier messages")} left out of the prompt`);
  }
  if (notes.length) {
    const foot = document.createElement("p");
    foot.className = "lore-note";
    foot.textContent = notes.join(" · ");
    details.append(foot);
  }
  return details;
}

// One line per tool call, just above the reply's meta line; replaced (not edited) when the call ends.
function toolLine(item, callId) {
  return [...item.querySelectorAll(".tool")].find((node) => node.dataset.callId === callId) || null;
}

function placeTool(item, node, callId) {
  node.dataset.callId = callId || "";
  const existing = callId ? toolLine(item, callId) : null;
  if (existing) existing.replaceWith(node);
  else item.insertBefore(node, item.querySelector(".meta"));
}

function toolStarted(item, data) {
  const line = document.createElement("p");
  line.className = "tool running";
  line.textContent = data.tool === "lorebook" ? "Consulting lorebook…" : `Using ${data.tool}…`;
  placeTool(item, line, data.callId);
}

function toolEnded(item, data) {
  let node;
  if (data.tool === "lorebook" && data.status === "ok" && data.result) {
    node = loreDetails(data.result);
  } else {
    node = document.createElement("p");
    node.className = data.status === "ok" ? "tool" : "tool failed";
    const what = data.tool === "lorebook" ? "Lorebook" : String(data.tool);
    node.textContent = data.status === "ok" ? `${what}: done` : `${what}: ${data.status}`;
  }
  placeTool(item, node, data.callId);
}

function finish(item, status, note) {
  item.dataset.status = status;
  item.removeAttribute("aria-busy");
  if (note) {
    const label = document.createElement("span");
    label.className = `state ${status}`;
    label.textContent = note;
    item.querySelector(".meta").append(label);
  }
}

function renderStored(message) {
  const item = messageItem(message.role);
  item.dataset.messageId = message.id;
  item.querySelector(".text").textContent = message.content;
  if (message.role === "assistant") {
    driftBadge(item, message.driftScore, message.driftThreshold, message.drifted);
    if (message.lore && Array.isArray(message.lore.activated)) placeTool(item, loreDetails(message.lore), "");
    if (message.status === "cancelled") finish(item, "cancelled", "cancelled");
    else if (message.status === "failed") finish(item, "failed", "failed");
    else finish(item, message.status, "");
  } else {
    item.dataset.status = message.status;
  }
  return item;
}

function initChat() {
  const root = document.getElementById("chat");
  const sessionId = root.dataset.sessionId;
  const form = document.getElementById("message-form");
  const stop = document.getElementById("stop");
  const base = `/v1/chat/sessions/${sessionId}/messages`;
  let current = null;

  async function stream(item, openFirst) {
    current = item;
    form.send.disabled = true;
    stop.disabled = false;
    item.setAttribute("aria-busy", "true");
    item.dataset.status = "streaming";
    setStatus("Replying…");
    const text = item.querySelector(".text");
    try {
      const terminal = await followRun(openFirst, (event, data) => {
        if (event === "message.started") item.dataset.messageId = data.messageId;
        else if (event === "tool_start") toolStarted(item, data);
        else if (event === "tool_end") toolEnded(item, data);
        else if (event === "token") text.textContent += data.delta;
        else if (event === "completed") {
          driftBadge(item, data.driftScore, data.driftThreshold, data.drifted);
          finish(item, "completed", "");
        } else if (event === "error") {
          finish(item, data.code === "cancelled" ? "cancelled" : "failed", data.code === "cancelled" ? "cancelled" : data.error);
        }
      });
      if (!terminal) finish(item, "completed", "");
      setStatus("");
    } catch (error) {
      finish(item, "failed", "failed");
      showError(error.message);
      setStatus("");
    } finally {
      current = null;
      form.send.disabled = false;
      stop.disabled = true;
    }
  }

  form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    const content = form.content.value.trim();
    if (!content || current) return;
    showError("");
    const mine = messageItem("user");
    mine.querySelector(".text").textContent = content;
    mine.dataset.status = "completed";
    form.content.value = "";
    const reply = messageItem("assistant");
    // on_disconnect=continue: a dropped connection must not cancel the reply, so we can resume it.
    stream(reply, () =>
      fetch(`${base}?stream=true&on_disconnect=continue`, {
        method: "POST",
        credentials: "same-origin",
        headers: headers("POST", { Accept: "text/event-stream", "Content-Type": "application/json" }),
        body: JSON.stringify({ content }),
      }),
    );
  });

  form.content.addEventListener("keydown", (key) => {
    if (key.key === "Enter" && !key.shiftKey) {
      key.preventDefault();
      form.requestSubmit();
    }
  });

  stop.addEventListener("click", async () => {
    const messageId = current && current.dataset.messageId;
    if (!messageId) return;
    stop.disabled = true;
    setStatus("Stopping…");
    try {
      await api("POST", `${base}/${messageId}/cancel`);
    } catch (error) {
      showError(error.message);
    }
  });

  (async () => {
    try {
      let url = base;
      const all = [];
      while (url) {
        const page = await api("GET", url);
        all.push(...page.results);
        url = page.next;
      }
      for (const message of all) {
        if (message.role === "assistant" && message.status === "streaming") {
          // Reloaded mid-reply: replay the reply from its first event and follow it live.
          const item = messageItem("assistant");
          item.dataset.messageId = message.id;
          stream(item, () =>
            fetch(`${base}/${message.id}/events`, {
              credentials: "same-origin",
              headers: { Accept: "text/event-stream", "Last-Event-ID": "0" },
            }).then((response) => {
              if (response.status === 204) {
                item.querySelector(".text").textContent = message.content;
                if (message.lore && Array.isArray(message.lore.activated)) placeTool(item, loreDetails(message.lore), "");
              }
              return response;
            }),
          );
        } else {
          renderStored(message);
        }
      }
      root.dataset.loaded = "true";
    } catch (error) {
      showError(error.message);
    }
  })();
}

const page = document.body.dataset.page;
wireChatButtons();
if (page === "persona-new") initPersonaNew();
if (page === "chat") initChat();
