import { type Accepted, type Json, type Message, type Receipt, SwitchboardError, type Welcome } from './protocol.js';
import { type TransportFactory } from './transports.js';
/**
 * `idle` before `connect()`; `connecting` while an attempt is under way (up
 * to its `welcome`); `open` from the `welcome` on; `waiting` for the next
 * attempt; `closed` after `close()`, for good.
 */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'waiting' | 'closed';
export interface ReconnectOptions {
    /** Ceiling of the first delay; each failed attempt doubles it. Default 500. */
    initialDelayMs?: number;
    /** Largest ceiling. Default 30000. */
    maxDelayMs?: number;
    /** Smallest ceiling after close 1013 (slow consumer: reconnect later). Default 5000. */
    laterDelayMs?: number;
}
export interface HeartbeatOptions {
    /** How often to send `ping`. Default: the `heartbeat_ms` of the `welcome`. */
    intervalMs?: number;
    /** A connection that sends nothing within this time after a `ping` is dropped. Default 10000. */
    timeoutMs?: number;
}
export interface ClientOptions {
    /** The node's WebSocket URL (`wss://host/ws`), or several: each new attempt takes the next. */
    url: string | readonly string[];
    /** A JWT, or a function called before every attempt for a fresh one. */
    token?: string | (() => string | Promise<string>);
    /** Development auth (`?user=ID`), for nodes run with `--dev-insecure-auth`. */
    user?: string;
    /** How to open a socket. Default: the global `WebSocket`, else the mini-program `wx`. */
    transport?: TransportFactory;
    reconnect?: ReconnectOptions;
    /** The application-level heartbeat, or `false` for none. */
    heartbeat?: HeartbeatOptions | false;
    /** An attempt without `welcome` within this time is abandoned. Default 10000. */
    connectTimeoutMs?: number;
    /** How many received message ids are remembered to drop repeats. Default 10000. */
    rememberMessages?: number;
}
/** A connection, or an attempt at one, ended. */
export interface Disconnect {
    /** The close code; 1006 when the connection failed or could not be opened. */
    code: number;
    reason: string;
    /** When the next attempt starts. */
    delayMs: number;
}
/** A `welcome` named another epoch than the one before: the server's stored state was lost. */
export interface EpochChange {
    previous: string;
    current: string;
}
export interface ClientEvents {
    state: ConnectionState;
    welcome: Welcome;
    disconnect: Disconnect;
    /** A message, once per `msg`; acked after the listeners returned. */
    message: Message;
    receipt: Receipt;
    epoch: EpochChange;
    /** A refusal that belongs to no send or query, an unreadable frame, a failed token callback. */
    error: SwitchboardError;
}
export interface SendOptions {
    /** The send's idempotency key, 1 to 64 bytes. Default: a fresh id. */
    id?: string;
}
type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;
export declare class SwitchboardClient {
    private readonly urls;
    private readonly options;
    private readonly transport;
    private readonly reconnect;
    private readonly listeners;
    private current;
    private socket;
    /** Bumped whenever a connection or attempt ends: reports from older ones are ignored. */
    private generation;
    private welcomed;
    private epoch;
    /** Failed attempts since the last `welcome`. */
    private attempt;
    private urlIndex;
    private waiters;
    /** Sends without `accepted`, in the order they were made. */
    private readonly sends;
    private writes;
    private readonly idPrefix;
    private idCounter;
    /** Consecutive resend rounds without an `accepted`. */
    private resendAttempt;
    private presenceQueries;
    /** What the server has yet to answer on this connection, in the order it was written. */
    private questions;
    /** Received message ids, oldest first. */
    private readonly seen;
    private reconnectTimer;
    private connectTimer;
    private resendTimer;
    private heartbeatTimer;
    private silenceTimer;
    constructor(options: ClientOptions);
    get state(): ConnectionState;
    /** Adds a listener; the function returned removes it. */
    on<K extends keyof ClientEvents>(type: K, listener: Listener<K>): () => void;
    /**
     * Starts connecting, and keeps the client connected until `close()`.
     * Resolves with the next `welcome` (the current one when open); rejects
     * only when the client is closed first.
     */
    connect(): Promise<Welcome>;
    /**
     * Sends `body` to user `to`. Resolves with the `accepted` answer, however
     * many reconnects it takes; rejects when the server refuses it for good
     * (`invalid_recipient`, `bad_frame`), when the node closed the connection
     * because of its size (`frame_too_large`), or when the client is closed.
     */
    send(to: string, body?: Json, options?: SendOptions): Promise<Accepted>;
    /** Which of `users` (0 to 100 valid user ids) are online, answered once connected. */
    presence(users: readonly string[]): Promise<Record<string, boolean>>;
    /** Closes the connection for good: pending sends and queries reject with `client_closed`. */
    close(): void;
    private dial;
    private receive;
    private opened;
    private accepted;
    private refused;
    /**
     * An error without an `id`. The server answers frames in order: a `ping`
     * with `pong` or `rate_limited`, a presence query with `presence` or an
     * error, an `ack` with nothing or `internal`. So `rate_limited` answers
     * the oldest question, and another code answers it when it is a presence
     * query, and is an ack's otherwise. (An `internal` while a query is the
     * oldest question may be an earlier ack's too: the query fails and can be
     * asked again; the ack is repaired by the next replay, where the message
     * is acked again.)
     */
    private refusedQuestion;
    private answered;
    private deliver;
    /** Writes `send` again later, with every other held send, in order. */
    private hold;
    private writeSend;
    private writePresence;
    private write;
    private startHeartbeat;
    /** Gives up on the current connection or attempt, and reconnects. */
    private drop;
    /** The current connection or attempt ended with `code`: reconnect after a delay. */
    private lost;
    /**
     * The node closes with 1009 at the first frame over its limit, after
     * answering every frame before it: the oldest unanswered send written on
     * this connection is the one. Written again, it would close every
     * connection the same way.
     */
    private rejectOversizedSend;
    /** Forgets the connection: its timers, its unanswered questions, what was written on it. */
    private endConnection;
    private reconnectDelay;
    private setState;
    private emit;
}
export {};
