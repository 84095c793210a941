import { type Accepted, type Codec, type Json, type Message, type Receipt, SwitchboardError, type Welcome } from './protocol.js';
import { type AppLifecycle, type ClientStorage, type TransportFactory } from './transports.js';
/**
 * `idle` before `connect()`; `connecting` while an attempt is under way (up
 * to its `welcome`); `open` from the `welcome` on; `waiting` for the next
 * attempt; `closed` after `close()` or close 4003, for good.
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
    /**
     * A JWT, or a function called for a fresh one before every attempt and
     * before the current token expires (in-band refresh).
     */
    token?: string | (() => string | Promise<string>);
    /** Development auth (`?user=ID`), for nodes run with `--dev-insecure-auth`. */
    user?: string;
    /** This device's id (1 to 64 of `A-Z a-z 0-9 _ . : @ -`). Default: one made once and kept in `storage`. */
    device?: string;
    /**
     * Where the device id, the processed seqs and the unanswered sends are
     * kept. Default: `localStorage`, else the mini-program's storage; `null`:
     * nowhere (a new device each time).
     */
    storage?: ClientStorage | null;
    /** The first connection replays the log after this seq instead of after the device's cursor. */
    since?: number;
    /** `json` (default), `msgpack` (loads `./msgpack.js` and @msgpack/msgpack when first needed), or a codec. */
    codec?: 'json' | 'msgpack' | Codec;
    /** How to open a socket. Default: the global `WebSocket`, else the mini-program `wx`. */
    transport?: TransportFactory;
    /** The mini-program's lifecycle events (`wx`, `uni`, `Taro`). Default: the global `wx` in a mini-program; `null`: none. */
    app?: AppLifecycle | null;
    reconnect?: ReconnectOptions;
    /** The application-level heartbeat, or `false` for none. */
    heartbeat?: HeartbeatOptions | false;
    /** An attempt without `welcome` within this time is abandoned. Default 10000. */
    connectTimeoutMs?: number;
    /** How many received message ids are remembered to drop repeats. Default 10000. */
    rememberMessages?: number;
    /** Acks wait this long, so that one ack frame covers a burst. Default 100. */
    ackDelayMs?: number;
    /** A missing seq is reported as a gap, and passed, when it is still missing after this long. Default 3000. */
    gapTimeoutMs?: number;
    /** `typing(to)` sends at most once per this long to the same recipients. Default 3000. */
    typingIntervalMs?: number;
    /** The token is refreshed this long before it expires (at most a third of its remaining life). Default 60000. */
    refreshMarginMs?: number;
}
/** A connection, or an attempt at one, ended. */
export interface Disconnect {
    /** The close code; 1006 when the connection failed or could not be opened. */
    code: number;
    reason: string;
    /** When the next attempt starts; `null` when it waits for the app to be shown again. */
    delayMs: number | null;
}
/** The backend disconnected this user (close 4003): the client stopped for good. */
export interface Disconnected {
    code: number;
    reason: string;
}
/** A `welcome` named another epoch than the one before: the server's stored state was lost. */
export interface EpochChange {
    previous: string;
    current: string;
}
/** Seqs `from` to `to` of `user`'s log never came, while later ones did: gone from the log (trimmed), or late. */
export interface Gap {
    user: string;
    from: number;
    to: number;
}
/** Someone is typing to this user (an ephemeral send made by `typing()`). */
export interface Typing {
    from: string;
    to: string;
}
export interface ClientEvents {
    state: ConnectionState;
    welcome: Welcome;
    disconnect: Disconnect;
    disconnected: Disconnected;
    /** A message, once per `msg`; acked after the listeners returned. */
    message: Message;
    /** Every accepted send, those resent from storage after a restart included. */
    accepted: Accepted;
    receipt: Receipt;
    typing: Typing;
    gap: Gap;
    /** The token was refreshed in-band: the connection lasts until `exp` (Unix seconds). */
    refreshed: {
        exp: number;
    };
    epoch: EpochChange;
    /** A refusal that belongs to no send or query, an unreadable frame, a failed token callback or refresh. */
    error: SwitchboardError;
}
export interface SendOptions {
    /** The send's idempotency key, 1 to 64 bytes. Default: a fresh id. */
    id?: string;
    /** Live only: to the connections online now; not kept, not resent, no receipt. */
    ephemeral?: boolean;
}
/** The body of the ephemeral sends `typing()` makes. */
export declare const TYPING_BODY: {
    readonly switchboard: "typing";
};
type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;
export declare class SwitchboardClient {
    /** This client's device id, sent as `?device=`. */
    readonly device: string;
    private readonly urls;
    private readonly options;
    private readonly transport;
    private readonly storage;
    private readonly app;
    private readonly reconnect;
    private readonly listeners;
    private current;
    private codec;
    private socket;
    /** Bumped whenever a connection or attempt ends: reports from older ones are ignored. */
    private generation;
    private welcomed;
    /** The user of the latest `welcome`. */
    private user;
    private epoch;
    /** Failed attempts since the last `welcome`. */
    private attempt;
    private urlIndex;
    private waiters;
    /** The `since` of the next attempt. */
    private since;
    /** Whether the app is in the background (mini-programs): no heartbeats, no reconnects. */
    private hidden;
    /** Sends without `accepted`, in the order they were made. */
    private readonly sends;
    /** Stored sends of another user than this client's: kept in storage as they are. */
    private foreign;
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
    /** When `typing()` last sent to each set of recipients. */
    private readonly typingSent;
    /** Per user: every seq up to this one was processed (or reported as a gap). */
    private seqs;
    /** The epoch `seqs` belong to. */
    private seqsEpoch;
    /** Processed seqs of the current user above its cursor, past a missing one. */
    private readonly ahead;
    /** Seqs reported as gaps: a message that still comes with one of them is shown. */
    private readonly passed;
    /** The latest seq of the current connection's `welcome`. */
    private welcomeSeq;
    /** The cumulative ack is due on this connection. */
    private ackSeq;
    /** `msg` acks due on this connection (messages without `seq`). */
    private ackMsgs;
    private reconnectTimer;
    private connectTimer;
    private resendTimer;
    private heartbeatTimer;
    private silenceTimer;
    private ackTimer;
    private gapTimer;
    private refreshTimer;
    private readonly shown;
    private readonly hide;
    private readonly network;
    constructor(options: ClientOptions);
    get state(): ConnectionState;
    /** The seq up to which the current user's messages were processed, once known. */
    get seq(): number | undefined;
    /** Adds a listener; the function returned removes it. */
    on<K extends keyof ClientEvents>(type: K, listener: Listener<K>): () => void;
    /**
     * Starts connecting, and keeps the client connected until `close()`.
     * Resolves with the next `welcome` (the current one when open); rejects
     * only when the client is closed first.
     */
    connect(): Promise<Welcome>;
    /**
     * Connects again now, and has the server replay the log after `since`
     * (acked or not): messages after it are shown again. For an application
     * that lost what it had received. Resolves with the new `welcome`.
     */
    resync(since: number): Promise<Welcome>;
    /**
     * Sends `body` to user `to`, or to each user of a list. Resolves with the
     * `accepted` answer (with `recipients` for a list), however many
     * reconnects it takes; rejects when the server refuses it for good
     * (`invalid_recipient`, `bad_frame`, `too_large`), when the node closed
     * the connection because of its size (`frame_too_large`), or when the
     * client is closed. An ephemeral send is written only on an open
     * connection and never again: it rejects with `not_connected` or
     * `connection_lost` instead.
     */
    send(to: string | readonly string[], body?: Json, options?: SendOptions): Promise<Accepted>;
    /**
     * Tells `to` that this user is typing: an ephemeral send of
     * `TYPING_BODY`, at most once per `typingIntervalMs` for the same
     * recipients, only while connected. Returns whether it sent one.
     */
    typing(to: string | readonly string[]): boolean;
    /** Which of `users` (0 to 100 valid user ids) are online, answered once connected. */
    presence(users: readonly string[]): Promise<Record<string, boolean>>;
    /**
     * Closes the connection for good: pending sends and queries reject with
     * `client_closed`, and the rejected sends leave storage.
     */
    close(): void;
    private stop;
    private storedDevice;
    private dial;
    private receive;
    /** Takes the oldest open question of `kind` off the list. */
    private answer;
    private opened;
    /**
     * The `welcome` names the user: sends made before anyone was named become
     * its own, and restored sends of another user are left in storage.
     */
    private adoptUser;
    /** Where this connection's seqs start from, by the `welcome`'s epoch and seq and the `since` asked for. */
    private syncCursor;
    private accepted;
    private refused;
    /**
     * An error without an `id`. The server answers frames in order: a `ping`
     * with `pong` or `rate_limited`, a `refresh` with `refreshed`,
     * `bad_token` or `rate_limited`, a presence query with `presence` or an
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
    /** Remembers a message id; whether it is new. */
    private remember;
    /** The cursor of `user` moves to `seq`, and over what was processed past it. */
    private advance;
    /** The oldest missing seqs are still missing: report them and move past them. */
    private passGap;
    /** Acks within `ackDelayMs`, with whatever else comes meanwhile; `cumulative`: the cursor is to be acked. */
    private scheduleAck;
    /** Writes the acks due: one cumulative ack for the logged messages, one per live-only message. */
    private flushAcks;
    private scheduleRefresh;
    /** Asks the token callback for a fresh token and hands it to the server on this connection. */
    private refresh;
    private appHidden;
    private appShown;
    /** Dials at once when waiting for the next attempt (back online, shown again). */
    private reconnectNow;
    /** Writes `send` again later, with every other held send, in order. */
    private hold;
    private writeSend;
    private writePresence;
    private write;
    private startHeartbeat;
    private ping;
    private stopHeartbeat;
    /** Gives up on the current connection or attempt, and reconnects. */
    private drop;
    /**
     * The current connection or attempt ended with `code`: reconnect after a
     * delay, or when the app is shown again; after 4003, never.
     */
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
    /** Stored sends of earlier clients on this storage: pending again, first, with their ids. */
    private restoreOutbox;
    private saveOutbox;
    private setState;
    private emit;
}
export {};
