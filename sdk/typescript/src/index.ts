// Moonborn TypeScript SDK: fetch-based, zero runtime dependencies, Node 18+ and browsers.

export type StepName = "soul_draft" | "lore_weave" | "psyche_profile" | "voice_print" | "dialogue_seed" | "card_compile";

interface Base<T extends string, D> {
  /** The event's number in its run (1, 2, 3…), usable as Last-Event-ID. */
  id: number;
  type: T;
  data: D;
}

export interface StreamErrorData {
  error: string;
  code: "provider_error" | "provider_timeout" | "cancelled" | "server_shutdown" | "internal_error" | string;
  retryable: boolean;
}

export type PersonaEvent =
  | Base<"pipeline.started", { personaId: string }>
  | Base<"step.started", { step: StepName }>
  | Base<"step.completed", { step: StepName; durationMs: number; model: string }>
  | Base<"pipeline.completed", { personaId: string; durationMs: number }>
  | Base<"error", StreamErrorData>;

/**
 * A tool call began. Today the tool is `lorebook` (args `{ turn }`), consulted between `message.started` and the
 * first `token` when the persona has a lorebook; more tools will use the same two events.
 */
export interface ToolStartData {
  callId: string;
  tool: string;
  args: Record<string, unknown>;
}

/**
 * A tool call ended, with the same `callId` as its `tool_start`. `result` is the `lorebook`'s `LorebookResult`, as
 * the schema says: the only tool today.
 */
export interface ToolEndData {
  callId: string;
  tool: string;
  status: "ok" | "error";
  result: LorebookResult;
  durationMs: number;
}

/** Why a lorebook entry went into the prompt (`kind`), with the key, decorator or entry that did it. */
export interface LoreActivation {
  kind: "constant" | "key" | "secondary_key" | "recursion" | "decorator";
  [detail: string]: unknown;
}

/** Why a candidate entry was left out (`kind`), with the budget, decorator, key or depth that did it. */
export interface LoreSkip {
  kind: "budget" | "decorator" | "scan_depth" | "secondary_keys" | "recursion_limit";
  [detail: string]: unknown;
}

export interface LoreEntry<R> {
  /** The entry's id in the book. */
  entry: string;
  name: string;
  reason: R;
}

/** The `lorebook` tool's result: the entries inserted (in prompt order), the candidates skipped, their tokens. */
export type LorebookResult = {
  activated: Array<LoreEntry<LoreActivation>>;
  skipped: Array<LoreEntry<LoreSkip>>;
  tokens: number;
};

/**
 * A reply's `lore` in the history: the lorebook's result and how many history messages the prompt's budget left
 * out. The lorebook's fields are absent when no lorebook was consulted (only history was dropped).
 */
export interface MessageLore extends Partial<LorebookResult> {
  historyDropped: number;
}

export type ChatEvent =
  | Base<"message.started", { messageId: string; userMessageId: string }>
  | Base<"tool_start", ToolStartData>
  | Base<"tool_end", ToolEndData>
  | Base<"token", { delta: string }>
  | Base<"completed", { messageId: string; driftScore: number; driftThreshold: number; drifted: boolean }>
  | Base<"error", StreamErrorData>;

export type StreamEvent = PersonaEvent | ChatEvent;

export interface Persona {
  id: string;
  name: string;
  status: "generating" | "ready" | "failed" | "cancelled";
  prompt: string;
  model: string;
  steps: Array<{ step: StepName; status: string; model: string; durationMs: number | null; output: Record<string, unknown> }>;
  card: Record<string, unknown>;
  systemPrompt: string;
  driftThreshold: number | null;
  [key: string]: unknown;
}

export interface ChatSession {
  id: string;
  personaId: string;
  createdAt: string;
  [key: string]: unknown;
}

/** Tier 1 of drift: the reply scored again by the full embedder after `completed`, or skipped (tier 0 was
 * certain while tier 1 had a backlog). */
export interface DriftTier1 {
  status: "scored" | "skipped";
  score: number | null;
  threshold: number | null;
  drifted: boolean | null;
  scoredAt: string;
}

export interface Message {
  id: string;
  role: "user" | "assistant";
  content: string;
  status: "streaming" | "completed" | "cancelled" | "failed";
  driftScore: number | null;
  driftThreshold: number | null;
  drifted: boolean;
  /** null until the tier-1 worker has scored the reply (seconds after `completed`). */
  driftTier1: DriftTier1 | null;
  /** null when the reply consulted no lorebook and dropped no history (and on user messages). */
  lore: MessageLore | null;
  [key: string]: unknown;
}

export interface Reply {
  messageId: string;
  content: string;
  driftScore: number | null;
  driftThreshold: number | null;
  [key: string]: unknown;
}

export interface Page<T> {
  results: T[];
  next: string | null;
  previous: string | null;
}

/** Base class of every error the SDK throws. */
export class MoonbornError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MoonbornError";
  }
}

/** A non-2xx answer, carrying the api.md `code` (e.g. `validation_error`, `not_found`). */
export class APIError extends MoonbornError {
  readonly status: number;
  readonly code: string;
  readonly details: Record<string, unknown>;
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, details: Record<string, unknown>, retryAfter: number | null) {
    super(message);
    this.name = "APIError";
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** The server could not be reached, or a dropped stream could not be resumed. */
export class ConnectionError extends MoonbornError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message);
    this.name = "ConnectionError";
    if (options?.cause !== undefined) (this as { cause?: unknown }).cause = options.cause;
  }
}

async function errorFrom(response: Response): Promise<APIError> {
  let code = "http_error";
  let message = `HTTP ${response.status}`;
  let details: Record<string, unknown> = {};
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string; details?: Record<string, unknown> } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
    details = body.error?.details ?? {};
  } catch {
    // Not the API's JSON error body (a proxy page, say): the status alone must do.
  }
  const retryAfter = response.headers.get("Retry-After");
  return new APIError(response.status, code, message, details, retryAfter === null ? null : Number(retryAfter));
}

/**
 * Where a `Location` points, for the client to send its API key there; another origin is refused.
 * A path (the server's own form) stays a path, joined to the base URL as every request path is; anything
 * else is resolved against the base URL and kept whole, if it is on the base URL's origin.
 */
function sameOriginLocation(baseUrl: string, location: string): string {
  const base = new URL(`${baseUrl}/`);
  let target: URL | null;
  try {
    target = new URL(location, base);
  } catch {
    target = null;
  }
  if (target === null || target.origin !== base.origin) {
    throw new MoonbornError(
      `Refusing the stream's Location ${JSON.stringify(location)}: it is not on ${base.origin}, and the client sends its API key only there.`,
    );
  }
  return location.startsWith("/") ? location : target.href;
}

const TERMINAL = new Set(["pipeline.completed", "completed", "error"]);

interface RawEvent {
  id: string;
  event: string;
  data: string;
}

/**
 * Decode an SSE body by the WHATWG rules: lines end at CR, LF or CRLF and nowhere else (U+2028, U+2029 and
 * U+0085 are text), comments skipped, a blank line dispatches only when data was seen.
 */
async function* decodeEvents(body: ReadableStream<Uint8Array>, onRetry: (ms: number) => void): AsyncGenerator<RawEvent> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  // The last text read ended in CR, whose line is out already: an LF opening the next one completes that CRLF.
  let afterCR = false;
  let id = "";
  let event = "";
  let data: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let text = decoder.decode(value, { stream: true });
      if (text === "") continue; // only part of a UTF-8 sequence so far
      if (afterCR && text.startsWith("\n")) text = text.slice(1);
      afterCR = text.endsWith("\r");
      const lines = (buffer + text).split(/\r\n|\r|\n/);
      buffer = lines.pop()!;
      for (const line of lines) {
        if (line === "") {
          if (data.length > 0) yield { id, event: event || "message", data: data.join("\n") };
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "id") {
          if (!val.includes("\0")) id = val;
        } else if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "retry" && /^\d+$/.test(val)) onRetry(Number(val));
      }
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}

export interface ClientOptions {
  apiKey: string;
  /** Default `http://127.0.0.1:8000`. */
  baseUrl?: string;
  /** A fetch implementation; default the global one. */
  fetch?: typeof fetch;
  /** Resume attempts after a dropped stream (default 5). */
  maxReconnects?: number;
  /** Wait before resuming; default the server's `retry:` (3000 ms). */
  reconnectDelayMs?: number;
}

export interface StreamOptions {
  /** Aborting cancels the run on the server and ends the iteration with the signal's reason. */
  signal?: AbortSignal;
}

type Opener = (headers: Record<string, string>, signal: AbortSignal) => Promise<Response>;

/**
 * A live stream: `for await (const event of stream)`. Resumes after a dropped connection with
 * Last-Event-ID; `cancel()` (or aborting the signal) stops the run on the server.
 */
export class EventStream<E extends StreamEvent> implements AsyncIterable<E> {
  /** The resource being produced (the `Location` header), once known. */
  location: string | null = null;
  lastEventId = 0;
  done = false;
  /** Every token's delta so far (chat replies). */
  text = "";
  private readonly client: Moonborn;
  private readonly open: Opener;
  private readonly cancelOnReturn: boolean;
  private readonly userSignal: AbortSignal | undefined;
  private readonly controller = new AbortController();
  private retryMs: number | null = null;
  private started = false;
  private cancelled = false;

  /** @internal */
  constructor(client: Moonborn, open: Opener, options: { cancelOnReturn: boolean; signal?: AbortSignal }) {
    this.client = client;
    this.open = open;
    this.cancelOnReturn = options.cancelOnReturn;
    this.userSignal = options.signal;
  }

  /** Stop the run on the server; the stream then ends with its terminal `error` event (code `cancelled`). */
  async cancel(): Promise<void> {
    if (this.location === null) throw new MoonbornError("This stream has no run to cancel yet.");
    this.cancelled = true;
    await this.client.request("POST", `${this.location}/cancel`);
  }

  [Symbol.asyncIterator](): AsyncIterator<E> {
    if (this.started) throw new MoonbornError("An EventStream can be iterated only once.");
    this.started = true;
    return this.iterate();
  }

  private async *iterate(): AsyncGenerator<E> {
    let stopping: Promise<void> | null = null;
    const onAbort = () => {
      // abort = cancel: stop the run server-side and drop the connection at once.
      if (this.location !== null && !this.done) stopping = this.cancel().catch(() => undefined);
      this.controller.abort(this.userSignal?.reason);
    };
    if (this.userSignal?.aborted) throw this.userSignal.reason;
    this.userSignal?.addEventListener("abort", onAbort, { once: true });
    let failures = 0;
    let finished = false;
    try {
      let response: Response | null = await this.send({});
      for (;;) {
        if (response === null) {
          this.done = true;
          finished = true;
          return;
        }
        let cause: unknown;
        try {
          for await (const raw of decodeEvents(response.body!, (ms) => (this.retryMs = ms))) {
            if (this.userSignal?.aborted) throw this.userSignal.reason;
            const event = { id: Number(raw.id) || 0, type: raw.event, data: JSON.parse(raw.data) } as E;
            if (event.id) this.lastEventId = event.id;
            if (event.type === "token") this.text += (event.data as { delta: string }).delta;
            failures = 0;
            if (TERMINAL.has(event.type)) {
              this.done = true;
              finished = true;
            }
            yield event;
            if (finished) return;
          }
        } catch (error) {
          if (this.userSignal?.aborted) throw this.userSignal.reason;
          if (error instanceof SyntaxError) throw error;
          cause = error;
        }
        // The connection ended before the terminal event: resume after the last event seen.
        response = null;
        while (response === null) {
          failures += 1;
          if (this.location === null || failures > this.client.maxReconnects) {
            throw new ConnectionError("The stream dropped and could not be resumed.", { cause });
          }
          await sleep(this.client.reconnectDelayMs ?? this.retryMs ?? 3000, this.controller.signal);
          try {
            const resumed = await this.send({ "Last-Event-ID": String(this.lastEventId) }, `${this.location}/events`);
            if (resumed === null) {
              this.done = true;
              finished = true;
              return;
            }
            response = resumed;
          } catch (error) {
            // Only a failed connection is worth another try; an error answer or a refused Location is final.
            if (!(error instanceof ConnectionError) || this.userSignal?.aborted) throw error;
            cause = error;
          }
        }
      }
    } finally {
      this.userSignal?.removeEventListener("abort", onAbort);
      if (stopping !== null) await stopping;
      if (!finished && this.cancelOnReturn && !this.cancelled && !this.userSignal?.aborted && this.location !== null) {
        // Leaving a reply early stops it, as the server does when a client disconnects.
        await this.cancel().catch(() => undefined);
      }
      this.controller.abort();
    }
  }

  private async send(extra: Record<string, string>, resumeUrl?: string): Promise<Response | null> {
    const headers = { Accept: "text/event-stream", ...extra };
    let response: Response;
    try {
      response = resumeUrl
        ? await this.client.fetchApi(resumeUrl, { headers, signal: this.controller.signal })
        : await this.open(headers, this.controller.signal);
    } catch (error) {
      if (this.userSignal?.aborted) throw this.userSignal.reason;
      throw new ConnectionError(`Could not reach ${this.client.baseUrl}: ${String(error)}`, { cause: error });
    }
    if (response.status === 204) return null;
    if (!response.ok) throw await errorFrom(response);
    const type = response.headers.get("Content-Type") ?? "";
    if (!type.startsWith("text/event-stream")) {
      await response.body?.cancel();
      throw new APIError(response.status, "not_a_stream", `Expected an event stream, got ${type || "nothing"}.`, {}, null);
    }
    const location = response.headers.get("Location");
    if (location !== null) {
      try {
        this.location = sameOriginLocation(this.client.baseUrl, location);
      } catch (error) {
        await response.body?.cancel();
        throw error;
      }
    }
    return response;
  }

  /** Read the rest of the stream and return its events. */
  async all(): Promise<E[]> {
    const out: E[] = [];
    for await (const event of this) out.push(event);
    return out;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** The Moonborn client: `new Moonborn({ apiKey, baseUrl })`. */
export class Moonborn {
  readonly baseUrl: string;
  readonly maxReconnects: number;
  readonly reconnectDelayMs: number | undefined;
  readonly personas: Personas;
  readonly chat: Chat;
  private readonly apiKey: string;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    if (!options?.apiKey) throw new MoonbornError("apiKey is required.");
    this.apiKey = options.apiKey;
    this.baseUrl = (options.baseUrl ?? "http://127.0.0.1:8000").replace(/\/+$/, "");
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.maxReconnects = options.maxReconnects ?? 5;
    this.reconnectDelayMs = options.reconnectDelayMs;
    this.personas = new Personas(this);
    this.chat = new Chat(this);
  }

  /** @internal A path is joined to the base URL; an absolute URL is a Location checked by `sameOriginLocation`. */
  fetchApi(path: string, init: RequestInit & { headers?: Record<string, string> } = {}): Promise<Response> {
    const url = /^[a-z][a-z\d+.-]*:/i.test(path) ? path : `${this.baseUrl}${path}`;
    return this.fetchImpl(url, {
      ...init,
      headers: { Authorization: `Bearer ${this.apiKey}`, ...init.headers },
    });
  }

  /** One JSON call; throws APIError for an error answer, ConnectionError when unreachable. */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response: Response;
    try {
      response = await this.fetchApi(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (error) {
      throw new ConnectionError(`Could not reach ${this.baseUrl}: ${String(error)}`, { cause: error });
    }
    if (!response.ok) throw await errorFrom(response);
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }

  /** @internal */
  stream<E extends StreamEvent>(method: string, path: string, body: unknown, options: StreamOptions & { cancelOnReturn: boolean }): EventStream<E> {
    const open: Opener = (headers, signal) =>
      this.fetchApi(path, {
        method,
        signal,
        headers: body === undefined ? headers : { ...headers, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    return new EventStream<E>(this, open, options);
  }
}

export interface CreatePersona extends StreamOptions {
  name?: string;
  model?: string;
}

class Personas {
  constructor(private readonly client: Moonborn) {}

  /** Generate a persona, streaming its six steps. */
  createStream(prompt: string, options: CreatePersona = {}): EventStream<PersonaEvent> {
    const { signal, ...rest } = options;
    return this.client.stream("POST", "/v1/personas", { prompt, ...rest }, { signal, cancelOnReturn: false });
  }

  /** Generate a persona and resolve with it finished. */
  create(prompt: string, options: Omit<CreatePersona, "signal"> = {}): Promise<Persona> {
    return this.client.request("POST", "/v1/personas", { prompt, ...options });
  }

  /** Replay a generation's events after `lastEventId` and follow it to its end. */
  events(personaId: string, options: StreamOptions & { lastEventId?: number } = {}): EventStream<PersonaEvent> {
    const { lastEventId = 0, signal } = options;
    return this.client.stream("GET", `/v1/personas/${personaId}/events?lastEventId=${lastEventId}`, undefined, {
      signal,
      cancelOnReturn: false,
    });
  }

  get(personaId: string): Promise<Persona> {
    return this.client.request("GET", `/v1/personas/${personaId}`);
  }

  list(): Promise<Page<Persona>> {
    return this.client.request("GET", "/v1/personas");
  }

  delete(personaId: string): Promise<void> {
    return this.client.request("DELETE", `/v1/personas/${personaId}`);
  }

  cancel(personaId: string): Promise<Persona> {
    return this.client.request("POST", `/v1/personas/${personaId}/cancel`);
  }
}

class Sessions {
  constructor(private readonly client: Moonborn) {}

  create(personaId: string): Promise<ChatSession> {
    return this.client.request("POST", "/v1/chat/sessions", { personaId });
  }

  get(sessionId: string): Promise<ChatSession> {
    return this.client.request("GET", `/v1/chat/sessions/${sessionId}`);
  }

  list(): Promise<Page<ChatSession>> {
    return this.client.request("GET", "/v1/chat/sessions");
  }

  delete(sessionId: string): Promise<void> {
    return this.client.request("DELETE", `/v1/chat/sessions/${sessionId}`);
  }
}

export interface StreamMessage extends StreamOptions {
  /** Default `continue`, so a dropped connection can resume; abort or break to stop the reply. */
  onDisconnect?: "cancel" | "continue";
}

class Chat {
  readonly sessions: Sessions;

  constructor(private readonly client: Moonborn) {
    this.sessions = new Sessions(client);
  }

  /** Send a message and stream the reply token by token. */
  streamMessage(sessionId: string, content: string, options: StreamMessage = {}): EventStream<ChatEvent> {
    const policy = options.onDisconnect ?? "continue";
    return this.client.stream(
      "POST",
      `/v1/chat/sessions/${sessionId}/messages?on_disconnect=${policy}`,
      { content },
      { signal: options.signal, cancelOnReturn: true },
    );
  }

  /** Send a message and resolve with the finished reply. */
  sendMessage(sessionId: string, content: string): Promise<Reply> {
    return this.client.request("POST", `/v1/chat/sessions/${sessionId}/messages`, { content });
  }

  /** The conversation, in order. */
  messages(sessionId: string): Promise<Page<Message>> {
    return this.client.request("GET", `/v1/chat/sessions/${sessionId}/messages`);
  }

  /** Replay a reply's events after `lastEventId` and follow it to its end. */
  events(sessionId: string, messageId: string, options: StreamOptions & { lastEventId?: number } = {}): EventStream<ChatEvent> {
    const { lastEventId = 0, signal } = options;
    return this.client.stream(
      "GET",
      `/v1/chat/sessions/${sessionId}/messages/${messageId}/events?lastEventId=${lastEventId}`,
      undefined,
      { signal, cancelOnReturn: false },
    );
  }

  cancel(sessionId: string, messageId: string): Promise<Message> {
    return this.client.request("POST", `/v1/chat/sessions/${sessionId}/messages/${messageId}/cancel`);
  }
}
