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
export type PersonaEvent = Base<"pipeline.started", {
    personaId: string;
}> | Base<"step.started", {
    step: StepName;
}> | Base<"step.completed", {
    step: StepName;
    durationMs: number;
    model: string;
}> | Base<"pipeline.completed", {
    personaId: string;
    durationMs: number;
}> | Base<"error", StreamErrorData>;
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
export type ChatEvent = Base<"message.started", {
    messageId: string;
    userMessageId: string;
}> | Base<"tool_start", ToolStartData> | Base<"tool_end", ToolEndData> | Base<"token", {
    delta: string;
}> | Base<"completed", {
    messageId: string;
    driftScore: number;
    driftThreshold: number;
    drifted: boolean;
}> | Base<"error", StreamErrorData>;
export type StreamEvent = PersonaEvent | ChatEvent;
export interface Persona {
    id: string;
    name: string;
    status: "generating" | "ready" | "failed" | "cancelled";
    prompt: string;
    model: string;
    steps: Array<{
        step: StepName;
        status: string;
        model: string;
        durationMs: number | null;
        output: Record<string, unknown>;
    }>;
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
export declare class MoonbornError extends Error {
    constructor(message: string);
}
/** A non-2xx answer, carrying the api.md `code` (e.g. `validation_error`, `not_found`). */
export declare class APIError extends MoonbornError {
    readonly status: number;
    readonly code: string;
    readonly details: Record<string, unknown>;
    readonly retryAfter: number | null;
    constructor(status: number, code: string, message: string, details: Record<string, unknown>, retryAfter: number | null);
}
/** The server could not be reached, or a dropped stream could not be resumed. */
export declare class ConnectionError extends MoonbornError {
    constructor(message: string, options?: {
        cause?: unknown;
    });
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
export declare class EventStream<E extends StreamEvent> implements AsyncIterable<E> {
    /** The resource being produced (the `Location` header), once known. */
    location: string | null;
    lastEventId: number;
    done: boolean;
    /** Every token's delta so far (chat replies). */
    text: string;
    private readonly client;
    private readonly open;
    private readonly cancelOnReturn;
    private readonly userSignal;
    private readonly controller;
    private retryMs;
    private started;
    private cancelled;
    /** @internal */
    constructor(client: Moonborn, open: Opener, options: {
        cancelOnReturn: boolean;
        signal?: AbortSignal;
    });
    /** Stop the run on the server; the stream then ends with its terminal `error` event (code `cancelled`). */
    cancel(): Promise<void>;
    [Symbol.asyncIterator](): AsyncIterator<E>;
    private iterate;
    private send;
    /** Read the rest of the stream and return its events. */
    all(): Promise<E[]>;
}
/** The Moonborn client: `new Moonborn({ apiKey, baseUrl })`. */
export declare class Moonborn {
    readonly baseUrl: string;
    readonly maxReconnects: number;
    readonly reconnectDelayMs: number | undefined;
    readonly personas: Personas;
    readonly chat: Chat;
    private readonly apiKey;
    private readonly fetchImpl;
    constructor(options: ClientOptions);
    /** @internal A path is joined to the base URL; an absolute URL is a Location checked by `sameOriginLocation`. */
    fetchApi(path: string, init?: RequestInit & {
        headers?: Record<string, string>;
    }): Promise<Response>;
    /** One JSON call; throws APIError for an error answer, ConnectionError when unreachable. */
    request<T>(method: string, path: string, body?: unknown): Promise<T>;
    /** @internal */
    stream<E extends StreamEvent>(method: string, path: string, body: unknown, options: StreamOptions & {
        cancelOnReturn: boolean;
    }): EventStream<E>;
}
export interface CreatePersona extends StreamOptions {
    name?: string;
    model?: string;
}
declare class Personas {
    private readonly client;
    constructor(client: Moonborn);
    /** Generate a persona, streaming its six steps. */
    createStream(prompt: string, options?: CreatePersona): EventStream<PersonaEvent>;
    /** Generate a persona and resolve with it finished. */
    create(prompt: string, options?: Omit<CreatePersona, "signal">): Promise<Persona>;
    /** Replay a generation's events after `lastEventId` and follow it to its end. */
    events(personaId: string, options?: StreamOptions & {
        lastEventId?: number;
    }): EventStream<PersonaEvent>;
    get(personaId: string): Promise<Persona>;
    list(): Promise<Page<Persona>>;
    delete(personaId: string): Promise<void>;
    cancel(personaId: string): Promise<Persona>;
}
declare class Sessions {
    private readonly client;
    constructor(client: Moonborn);
    create(personaId: string): Promise<ChatSession>;
    get(sessionId: string): Promise<ChatSession>;
    list(): Promise<Page<ChatSession>>;
    delete(sessionId: string): Promise<void>;
}
export interface StreamMessage extends StreamOptions {
    /** Default `continue`, so a dropped connection can resume; abort or break to stop the reply. */
    onDisconnect?: "cancel" | "continue";
}
declare class Chat {
    private readonly client;
    readonly sessions: Sessions;
    constructor(client: Moonborn);
    /** Send a message and stream the reply token by token. */
    streamMessage(sessionId: string, content: string, options?: StreamMessage): EventStream<ChatEvent>;
    /** Send a message and resolve with the finished reply. */
    sendMessage(sessionId: string, content: string): Promise<Reply>;
    /** The conversation, in order. */
    messages(sessionId: string): Promise<Page<Message>>;
    /** Replay a reply's events after `lastEventId` and follow it to its end. */
    events(sessionId: string, messageId: string, options?: StreamOptions & {
        lastEventId?: number;
    }): EventStream<ChatEvent>;
    cancel(sessionId: string, messageId: string): Promise<Message>;
}
export {};
