// SwitchboardClient: one logical connection of one user's device, kept
// alive across the real connections under it. The server's guarantees hold
// per connection (docs/protocol.md); this client carries them across
// reconnects and restarts, so that an application sees each message once
// and each send answered once:
//
// - The device id is made once and kept in storage: the server keeps a
//   cursor per device and replays, at each connect, what the device has not
//   acked.
// - A send stays pending until its `accepted`, in storage too: pending
//   sends are written again, in order and with the same `id` and `to`, on
//   every new connection, also by the next client after the app was
//   killed; the server answers a repeated id with the original `accepted`.
// - Logged messages carry `seq`. The client keeps, per user, the seq up to
//   which it processed every message, acks it cumulatively once per burst,
//   drops what comes again at or below it, and reports a seq that stays
//   missing as a gap.
// - Reconnects back off exponentially with jitter, so that the clients of a
//   node that went away do not come back all at once; 1012 (node restarting)
//   reconnects at once to the next URL, 4001 (token expired) at once with a
//   fresh token, 1013 (slow consumer) waits longer, 4003 (disconnected by
//   the backend) stops.
// - In a mini-program, the app's lifecycle drives the connection: hidden,
//   no heartbeats and no reconnects; shown or back online, at once.

import {
  type Accepted,
  CloseCode,
  type ClientFrame,
  type Codec,
  type ErrorFrame,
  type Json,
  MAX_PRESENCE_USERS,
  type Message,
  type PresenceAnswer,
  type Receipt,
  type ServerFrame,
  SwitchboardError,
  type Welcome,
  isDeviceId,
  isUserId,
  jsonCodec,
  utf8Length,
} from './protocol.js';
import {
  type AppLifecycle,
  type ClientStorage,
  type Transport,
  type TransportFactory,
  defaultLifecycle,
  defaultStorage,
  defaultTransport,
  withQuery,
} from './transports.js';

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
  refreshed: { exp: number };
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
export const TYPING_BODY = { switchboard: 'typing' } as const;

type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;
type Timer = ReturnType<typeof setTimeout>;
type Recipients = string | string[];

interface PendingSend {
  id: string;
  to: Recipients;
  body: Json;
  ephemeral: boolean;
  /** The user it was sent as: `null` until the first `welcome` names one. */
  user: string | null;
  resolve?(accepted: Accepted): void;
  reject?(error: SwitchboardError): void;
  /** Order of its write on the current connection; 0 while not written there. */
  written: number;
  /** Refused for now (`rate_limited`, `internal`): written again by the resend timer. */
  held: boolean;
}

/** A pending send as storage keeps it. */
interface StoredSend {
  user: string | null;
  id: string;
  to: Recipients;
  body: Json;
}

interface PresenceQuery {
  /** The sorted, distinct users: the answer names exactly these. */
  key: string;
  frame: ClientFrame;
  resolve(online: Record<string, boolean>): void;
  reject(error: SwitchboardError): void;
}

/** A frame written on the current connection that the server answers. */
type Question = 'ping' | 'refresh' | PresenceQuery;

/** Server error codes after which the same send is written again later. */
const RETRIED_CODES = new Set(['rate_limited', 'internal']);

const KEYS = {
  device: 'switchboard.device',
  seqs: 'switchboard.seqs',
  outbox: 'switchboard.outbox',
};

const DEFAULTS = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  laterDelayMs: 5_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  rememberMessages: 10_000,
  ackDelayMs: 100,
  gapTimeoutMs: 3_000,
  typingIntervalMs: 3_000,
  refreshMarginMs: 60_000,
};

/** A delay between half of `ceiling` and `ceiling`: spread out, never a hot loop. */
function jitter(ceiling: number): number {
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * `promise`, marked as handled: a caller that does not wait for an answer
 * (a send whose receipt is all it wants, a `connect()` before `close()`)
 * gets no unhandled rejection; one that awaits still sees the failure.
 */
function handled<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** A promise rejected with `error`, marked as handled. */
function refused<T>(error: SwitchboardError): Promise<T> {
  return handled(Promise.reject(error));
}

function closedError(): SwitchboardError {
  return new SwitchboardError('client_closed', 'the client was closed');
}

/** A device id: 20 random characters, from `crypto` where there is one. */
function newDeviceId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = new Uint8Array(20);
  const crypto = (globalThis as { crypto?: { getRandomValues(array: Uint8Array): Uint8Array } }).crypto;
  if (crypto) crypto.getRandomValues(bytes);
  else for (let index = 0; index < bytes.length; index++) bytes[index] = Math.floor(Math.random() * 256);
  let id = 'd-';
  for (const byte of bytes) id += alphabet[byte % alphabet.length];
  return id;
}

function readJson<T>(storage: ClientStorage | undefined, key: string): T | undefined {
  try {
    const text = storage?.getItem(key);
    return text ? (JSON.parse(text) as T) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Writes to storage, in the background where it can. Storage is best
 * effort: a full or forbidden one (quota exceeded, private mode) costs
 * what it would have kept across a restart, never a send.
 */
function store(storage: ClientStorage | undefined, key: string, value: string, now = false): void {
  try {
    if (!storage) return;
    if (now || !storage.setItemLater) storage.setItem(key, value);
    else storage.setItemLater(key, value);
  } catch {
    // Kept in memory only.
  }
}

/** Whether `value` can be a `since`: a whole number. */
function isSeq(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function isTyping(message: Message): boolean {
  const body = message.body as Record<string, unknown> | null;
  return (
    message.seq === undefined &&
    typeof body === 'object' &&
    body !== null &&
    !Array.isArray(body) &&
    body.switchboard === TYPING_BODY.switchboard &&
    Object.keys(body).length === 1
  );
}

export class SwitchboardClient {
  /** This client's device id, sent as `?device=`. */
  readonly device: string;

  private readonly urls: readonly string[];
  private readonly options: ClientOptions;
  private readonly transport: TransportFactory;
  private readonly storage: ClientStorage | undefined;
  private readonly app: AppLifecycle | undefined;
  private readonly reconnect: Required<ReconnectOptions>;
  private readonly listeners: { [K in keyof ClientEvents]: Set<Listener<K>> } = {
    state: new Set(),
    welcome: new Set(),
    disconnect: new Set(),
    disconnected: new Set(),
    message: new Set(),
    accepted: new Set(),
    receipt: new Set(),
    typing: new Set(),
    gap: new Set(),
    refreshed: new Set(),
    epoch: new Set(),
    error: new Set(),
  };

  private current: ConnectionState = 'idle';
  private codec: Codec | undefined;
  private socket: Transport | null = null;
  /** Bumped whenever a connection or attempt ends: reports from older ones are ignored. */
  private generation = 0;
  private welcomed: Welcome | null = null;
  /** The user of the latest `welcome`. */
  private user: string | null;
  private epoch: string | null = null;
  /** Failed attempts since the last `welcome`. */
  private attempt = 0;
  private urlIndex = 0;
  private waiters: Array<{ resolve(welcome: Welcome): void; reject(error: SwitchboardError): void }> = [];
  /** The `since` of the next attempt. */
  private since: number | undefined;
  /** Whether the app is in the background (mini-programs): no heartbeats, no reconnects. */
  private hidden = false;

  /** Sends without `accepted`, in the order they were made. */
  private readonly sends = new Map<string, PendingSend>();
  /** Stored sends of another user than this client's: kept in storage as they are. */
  private foreign: StoredSend[] = [];
  private writes = 0;
  private readonly idPrefix = Math.random().toString(36).slice(2, 12);
  private idCounter = 0;
  /** Consecutive resend rounds without an `accepted`. */
  private resendAttempt = 0;
  private presenceQueries: PresenceQuery[] = [];
  /** What the server has yet to answer on this connection, in the order it was written. */
  private questions: Question[] = [];
  /** Received message ids, oldest first. */
  private readonly seen = new Set<string>();
  /** When `typing()` last sent to each set of recipients. */
  private readonly typingSent = new Map<string, number>();

  /** Per user: every seq up to this one was processed (or reported as a gap). */
  private seqs: Record<string, number> = {};
  /** The epoch `seqs` belong to. */
  private seqsEpoch: string | null = null;
  /** Processed seqs of the current user above its cursor, past a missing one. */
  private readonly ahead = new Set<number>();
  /** Seqs reported as gaps: a message that still comes with one of them is shown. */
  private readonly passed = new Set<number>();
  /** The latest seq of the current connection's `welcome`. */
  private welcomeSeq = 0;
  /** The cumulative ack is due on this connection. */
  private ackSeq = false;
  /** `msg` acks due on this connection (messages without `seq`). */
  private ackMsgs: string[] = [];

  private reconnectTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private resendTimer: Timer | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private silenceTimer: Timer | undefined;
  private ackTimer: Timer | undefined;
  private gapTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;

  private readonly shown = () => this.appShown();
  private readonly hide = () => this.appHidden();
  private readonly network = (result: { isConnected: boolean }) => {
    if (result.isConnected) this.reconnectNow();
  };

  constructor(options: ClientOptions) {
    this.urls = typeof options.url === 'string' ? [options.url] : [...options.url];
    if (this.urls.length === 0) throw new TypeError('url: give at least one');
    if (options.user !== undefined && !isUserId(options.user)) throw new TypeError(`user: invalid user id ${options.user}`);
    if (options.device !== undefined && !isDeviceId(options.device)) {
      throw new TypeError(`device: invalid device id ${options.device}`);
    }
    if (options.since !== undefined && !isSeq(options.since)) throw new TypeError(`since: not a whole number: ${options.since}`);
    this.options = options;
    this.transport = options.transport ?? defaultTransport();
    this.storage = options.storage === null ? undefined : (options.storage ?? defaultStorage());
    this.app = options.app === null ? undefined : (options.app ?? defaultLifecycle());
    this.reconnect = {
      initialDelayMs: options.reconnect?.initialDelayMs ?? DEFAULTS.initialDelayMs,
      maxDelayMs: options.reconnect?.maxDelayMs ?? DEFAULTS.maxDelayMs,
      laterDelayMs: options.reconnect?.laterDelayMs ?? DEFAULTS.laterDelayMs,
    };
    if (typeof options.codec === 'object') this.codec = options.codec;
    else if (options.codec !== 'msgpack') this.codec = jsonCodec;
    this.since = options.since;
    this.user = options.user ?? null;
    this.device = options.device ?? this.storedDevice();
    const stored = readJson<{ epoch: string; seqs: Record<string, number> }>(this.storage, KEYS.seqs);
    if (stored && typeof stored.epoch === 'string' && typeof stored.seqs === 'object' && stored.seqs !== null) {
      this.seqsEpoch = stored.epoch;
      this.seqs = stored.seqs;
    }
    this.restoreOutbox();
    this.app?.onAppShow(this.shown);
    this.app?.onAppHide(this.hide);
    this.app?.onNetworkStatusChange?.(this.network);
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** The seq up to which the current user's messages were processed, once known. */
  get seq(): number | undefined {
    return this.user === null ? undefined : this.seqs[this.user];
  }

  /** Adds a listener; the function returned removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: Listener<K>): () => void {
    this.listeners[type].add(listener);
    return () => this.listeners[type].delete(listener);
  }

  /**
   * Starts connecting, and keeps the client connected until `close()`.
   * Resolves with the next `welcome` (the current one when open); rejects
   * only when the client is closed first.
   */
  connect(): Promise<Welcome> {
    if (this.current === 'closed') return refused(closedError());
    if (this.welcomed) return Promise.resolve(this.welcomed);
    const welcome = handled(new Promise<Welcome>((resolve, reject) => this.waiters.push({ resolve, reject })));
    if (this.current === 'idle') void this.dial();
    return welcome;
  }

  /**
   * Connects again now, and has the server replay the log after `since`
   * (acked or not): messages after it are shown again. For an application
   * that lost what it had received. Resolves with the new `welcome`.
   */
  resync(since: number): Promise<Welcome> {
    if (this.current === 'closed') return refused(closedError());
    if (!isSeq(since)) return refused(new SwitchboardError('bad_frame', `since: not a whole number: ${since}`));
    this.since = since;
    const welcome = handled(new Promise<Welcome>((resolve, reject) => this.waiters.push({ resolve, reject })));
    if (this.current === 'open' || this.current === 'connecting') {
      const socket = this.socket;
      this.endConnection();
      socket?.close(1000, 'resync');
    }
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    void this.dial();
    return welcome;
  }

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
  send(to: string | readonly string[], body: Json = null, options: SendOptions = {}): Promise<Accepted> {
    if (this.current === 'closed') return refused(closedError());
    const ephemeral = options.ephemeral === true;
    if (ephemeral && this.current !== 'open') {
      return refused(new SwitchboardError('not_connected', 'an ephemeral send needs an open connection'));
    }
    const id = options.id ?? `${this.idPrefix}-${++this.idCounter}`;
    const bytes = utf8Length(id);
    if (bytes < 1 || bytes > 64) return refused(new SwitchboardError('bad_frame', 'a send id is 1 to 64 bytes'));
    if (this.sends.has(id)) {
      return refused(new SwitchboardError('duplicate_id', `send ${id} is still waiting for its answer`));
    }
    const recipients = typeof to === 'string' ? to : [...to];
    return handled(new Promise((resolve, reject) => {
      const send: PendingSend = { id, to: recipients, body, ephemeral, user: this.user, resolve, reject, written: 0, held: false };
      this.sends.set(id, send);
      if (!ephemeral) this.saveOutbox();
      // Behind held sends it waits for their turn, so that order is kept.
      if (this.resendTimer !== undefined && !ephemeral) send.held = true;
      else if (this.current === 'open') this.writeSend(send);
    }));
  }

  /**
   * Tells `to` that this user is typing: an ephemeral send of
   * `TYPING_BODY`, at most once per `typingIntervalMs` for the same
   * recipients, only while connected. Returns whether it sent one.
   */
  typing(to: string | readonly string[]): boolean {
    if (this.current !== 'open') return false;
    const key = typeof to === 'string' ? to : [...to].sort().join(',');
    const now = Date.now();
    const last = this.typingSent.get(key);
    if (last !== undefined && now - last < (this.options.typingIntervalMs ?? DEFAULTS.typingIntervalMs)) return false;
    this.typingSent.set(key, now);
    void this.send(to, { ...TYPING_BODY }, { ephemeral: true });
    return true;
  }

  /** Which of `users` (0 to 100 valid user ids) are online, answered once connected. */
  presence(users: readonly string[]): Promise<Record<string, boolean>> {
    if (this.current === 'closed') return refused(closedError());
    if (users.length > MAX_PRESENCE_USERS) {
      return refused(new SwitchboardError('too_large', `at most ${MAX_PRESENCE_USERS} users in one query`));
    }
    const invalid = users.find((user) => !isUserId(user));
    if (invalid !== undefined) return refused(new SwitchboardError('bad_frame', `invalid user id ${invalid}`));
    if (users.length === 0) return Promise.resolve({});
    const distinct = [...new Set(users)].sort();
    return handled(new Promise((resolve, reject) => {
      const query: PresenceQuery = { key: distinct.join(','), frame: { type: 'presence', users: distinct }, resolve, reject };
      this.presenceQueries.push(query);
      if (this.current === 'open') this.writePresence(query);
    }));
  }

  /**
   * Closes the connection for good: pending sends and queries reject with
   * `client_closed`, and the rejected sends leave storage.
   */
  close(): void {
    this.stop(closedError());
  }

  private stop(error: SwitchboardError): void {
    if (this.current === 'closed') return;
    const socket = this.socket;
    this.endConnection();
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.gapTimer);
    this.reconnectTimer = this.gapTimer = undefined;
    socket?.close(1000, 'client closed');
    for (const send of this.sends.values()) send.reject?.(error);
    this.sends.clear();
    this.saveOutbox();
    for (const query of this.presenceQueries) query.reject(error);
    this.presenceQueries = [];
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    this.app?.offAppShow?.(this.shown);
    this.app?.offAppHide?.(this.hide);
    this.app?.offNetworkStatusChange?.(this.network);
    this.setState('closed');
  }

  private storedDevice(): string {
    let stored: string | null | undefined;
    try {
      stored = this.storage?.getItem(KEYS.device);
    } catch {
      stored = undefined;
    }
    if (stored && isDeviceId(stored)) return stored;
    const device = newDeviceId();
    store(this.storage, KEYS.device, device, true);
    return device;
  }

  private async dial(): Promise<void> {
    const generation = ++this.generation;
    this.setState('connecting');
    let token: string | undefined;
    try {
      this.codec ??= (await import('./msgpack.js')).msgpackCodec;
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit('error', new SwitchboardError('transport_failed', `cannot load the MessagePack codec: ${String(error)}`));
      this.lost(CloseCode.Abnormal, 'no codec');
      return;
    }
    try {
      // No await for a token given as a string: the socket opens at once.
      const source = this.options.token;
      token = typeof source === 'function' ? await source() : source;
    } catch (error) {
      if (generation !== this.generation) return;
      this.emit('error', new SwitchboardError('token_failed', `token callback failed: ${String(error)}`));
      this.lost(CloseCode.Abnormal, 'no token');
      return;
    }
    // Closed while the token was on its way.
    if (generation !== this.generation) return;
    const base = this.urls[this.urlIndex % this.urls.length] as string;
    let url = this.options.user === undefined ? base : withQuery(base, 'user', this.options.user);
    url = withQuery(url, 'device', this.device);
    if (this.since !== undefined) url = withQuery(url, 'since', String(this.since));
    const events = {
      message: (data: string | ArrayBuffer) => generation === this.generation && this.receive(data),
      close: (code: number, reason: string) => generation === this.generation && this.lost(code, reason),
    };
    let socket: Transport;
    try {
      socket = this.transport({ url, token, protocol: this.codec.protocol }, events);
    } catch (error) {
      this.emit('error', new SwitchboardError('transport_failed', `cannot open ${base}: ${String(error)}`));
      this.lost(CloseCode.Abnormal, 'transport failed');
      return;
    }
    // A transport may report a failure before it returns.
    if (generation !== this.generation) return;
    this.socket = socket;
    const timeout = this.options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
    this.connectTimer = setTimeout(() => this.drop(`no welcome within ${timeout}ms`), timeout);
  }

  private receive(data: string | ArrayBuffer): void {
    let frame: ServerFrame | null = null;
    try {
      frame = (this.codec as Codec).decode(data) as ServerFrame | null;
    } catch {
      // Reported below.
    }
    if (typeof frame !== 'object' || frame === null) {
      const shown = typeof data === 'string' ? data.slice(0, 100) : `${data.byteLength} bytes`;
      this.emit('error', new SwitchboardError('unreadable_frame', `not a frame: ${shown}`));
      return;
    }
    // Anything from the server shows the connection is alive.
    clearTimeout(this.silenceTimer);
    this.silenceTimer = undefined;
    switch (frame.type) {
      case 'welcome':
        return this.opened(frame);
      case 'accepted':
        return this.accepted(frame);
      case 'error':
        return this.refused(frame);
      case 'message':
        return this.deliver(frame);
      case 'receipt':
        return this.emit('receipt', frame);
      case 'presence':
        return this.answered(frame);
      case 'pong':
        return this.answer('ping');
      case 'refreshed':
        this.answer('refresh');
        this.scheduleRefresh(frame.exp);
        return this.emit('refreshed', { exp: frame.exp });
      // Frame types added later are ignored, as unknown fields are.
    }
  }

  /** Takes the oldest open question of `kind` off the list. */
  private answer(kind: 'ping' | 'refresh'): void {
    const index = this.questions.indexOf(kind);
    if (index >= 0) this.questions.splice(index, 1);
  }

  private opened(welcome: Welcome): void {
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.attempt = 0;
    this.welcomed = welcome;
    const previous = this.epoch;
    this.epoch = welcome.epoch;
    this.adoptUser(welcome.user);
    this.syncCursor(welcome);
    // What was pending goes out before any listener can add to it.
    this.current = 'open';
    for (const query of this.presenceQueries) this.writePresence(query);
    for (const send of this.sends.values()) this.writeSend(send);
    if (!this.hidden) this.startHeartbeat();
    if (welcome.exp !== undefined) this.scheduleRefresh(welcome.exp);
    this.emit('state', 'open');
    if (previous !== null && previous !== welcome.epoch) this.emit('epoch', { previous, current: welcome.epoch });
    this.emit('welcome', welcome);
    for (const waiter of this.waiters.splice(0)) waiter.resolve(welcome);
  }

  /**
   * The `welcome` names the user: sends made before anyone was named become
   * its own, and restored sends of another user are left in storage.
   */
  private adoptUser(user: string): void {
    if (this.user !== user) {
      this.ahead.clear();
      this.passed.clear();
    }
    this.user = user;
    let changed = false;
    for (const send of [...this.sends.values()]) {
      if (send.user === user) continue;
      changed = true;
      if (send.user === null) {
        send.user = user;
      } else {
        this.sends.delete(send.id);
        this.foreign.push({ user: send.user, id: send.id, to: send.to, body: send.body });
      }
    }
    if (changed) this.saveOutbox();
  }

  /** Where this connection's seqs start from, by the `welcome`'s epoch and seq and the `since` asked for. */
  private syncCursor(welcome: Welcome): void {
    const user = welcome.user;
    if (this.seqsEpoch !== welcome.epoch) {
      // Seqs belong to an epoch: a new one starts them again.
      this.seqs = {};
      this.seqsEpoch = welcome.epoch;
      this.ahead.clear();
      this.passed.clear();
    }
    this.welcomeSeq = welcome.seq ?? 0;
    if (this.since !== undefined) {
      // Everything after `since` still in the log comes again, and is
      // shown again; the cursor starts where that replay starts.
      delete this.seqs[user];
      this.since = undefined;
      this.ahead.clear();
      this.passed.clear();
      this.seen.clear();
    }
    const cursor = this.seqs[user];
    if (cursor !== undefined && cursor > this.welcomeSeq) delete this.seqs[user];
  }

  private accepted(frame: Accepted): void {
    const send = this.sends.get(frame.id);
    // A repeat of an answer already taken (a resend's) finds nothing.
    if (!send) return;
    this.sends.delete(frame.id);
    if (!send.ephemeral) this.saveOutbox();
    this.resendAttempt = 0;
    if (!send.ephemeral) this.emit('accepted', frame);
    send.resolve?.(frame);
  }

  private refused(frame: ErrorFrame): void {
    const send = frame.id === undefined ? undefined : this.sends.get(frame.id);
    if (send && RETRIED_CODES.has(frame.code) && !send.ephemeral) {
      this.hold(send);
    } else if (send) {
      this.sends.delete(send.id);
      if (!send.ephemeral) this.saveOutbox();
      send.reject?.(new SwitchboardError(frame.code, frame.message));
    } else if (frame.id === undefined && frame.code === 'bad_token') {
      // The connection lasts until its token expires (close 4001), and
      // the next connection gets a fresh token.
      this.answer('refresh');
      this.emit('error', new SwitchboardError(frame.code, frame.message));
    } else if (frame.id === undefined) {
      this.refusedQuestion(frame);
    }
  }

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
  private refusedQuestion(frame: ErrorFrame): void {
    const oldest = this.questions[0];
    const isQuery = oldest !== undefined && oldest !== 'ping' && oldest !== 'refresh';
    if (oldest !== undefined && (frame.code === 'rate_limited' || isQuery)) {
      this.questions.shift();
      if (oldest === 'ping') return;
      if (oldest === 'refresh') {
        this.refreshTimer = setTimeout(() => void this.refresh(), 1000);
        return;
      }
      this.presenceQueries = this.presenceQueries.filter((query) => query !== oldest);
      oldest.reject(new SwitchboardError(frame.code, frame.message));
      return;
    }
    this.emit('error', new SwitchboardError(frame.code, frame.message));
  }

  private answered(frame: PresenceAnswer): void {
    const key = Object.keys(frame.online).sort().join(',');
    const index = this.questions.findIndex((question) => typeof question === 'object' && question.key === key);
    const query = this.questions[index];
    if (typeof query !== 'object') return;
    this.questions.splice(index, 1);
    this.presenceQueries = this.presenceQueries.filter((pending) => pending !== query);
    query.resolve(frame.online);
  }

  private deliver(message: Message): void {
    if (isTyping(message)) {
      this.emit('typing', { from: message.from, to: message.to });
      return;
    }
    if (message.seq === undefined || message.to !== this.user) {
      // Live only: no cursor to move, acked by its id (for its receipt).
      if (this.remember(message.msg)) this.emit('message', message);
      this.ackMsgs.push(message.msg);
      this.scheduleAck(false);
      return;
    }
    const seq = message.seq;
    const user = message.to;
    let cursor = this.seqs[user];
    if (cursor === undefined) {
      // The first seq this device hears of: the replay starts at what the
      // server has for it, or, past the welcome's seq, there was none.
      cursor = seq <= this.welcomeSeq ? seq - 1 : this.welcomeSeq;
      this.seqs[user] = cursor;
    }
    const late = this.passed.has(seq);
    if ((seq <= cursor && !late) || this.ahead.has(seq) || this.seen.has(message.msg)) {
      // A repeat: it came again because no ack reached the log, so ack again.
      if (seq <= cursor) this.scheduleAck(true);
      return;
    }
    this.remember(message.msg);
    this.passed.delete(seq);
    this.emit('message', message);
    if (late) return;
    if (seq === cursor + 1) {
      this.advance(user, seq);
      this.scheduleAck(true);
    } else {
      // Past a missing seq: acked once the cursor gets here.
      this.ahead.add(seq);
      this.gapTimer ??= setTimeout(() => this.passGap(), this.options.gapTimeoutMs ?? DEFAULTS.gapTimeoutMs);
    }
  }

  /** Remembers a message id; whether it is new. */
  private remember(msg: string): boolean {
    if (this.seen.has(msg)) return false;
    this.seen.add(msg);
    if (this.seen.size > (this.options.rememberMessages ?? DEFAULTS.rememberMessages)) {
      this.seen.delete(this.seen.values().next().value as string);
    }
    return true;
  }

  /** The cursor of `user` moves to `seq`, and over what was processed past it. */
  private advance(user: string, seq: number): void {
    let cursor = seq;
    while (this.ahead.delete(cursor + 1)) cursor += 1;
    this.seqs[user] = cursor;
    if (this.ahead.size === 0) {
      clearTimeout(this.gapTimer);
      this.gapTimer = undefined;
    }
  }

  /** The oldest missing seqs are still missing: report them and move past them. */
  private passGap(): void {
    this.gapTimer = undefined;
    const user = this.user;
    if (user === null || this.ahead.size === 0) return;
    const from = (this.seqs[user] ?? 0) + 1;
    const next = Math.min(...this.ahead);
    for (let seq = from; seq < next && this.passed.size < 10_000; seq++) this.passed.add(seq);
    this.ahead.delete(next);
    this.advance(user, next);
    if (this.ahead.size > 0) {
      this.gapTimer = setTimeout(() => this.passGap(), this.options.gapTimeoutMs ?? DEFAULTS.gapTimeoutMs);
    }
    this.ackSeq = true;
    this.flushAcks();
    this.emit('gap', { user, from, to: next - 1 });
  }

  /** Acks within `ackDelayMs`, with whatever else comes meanwhile; `cumulative`: the cursor is to be acked. */
  private scheduleAck(cumulative: boolean): void {
    if (cumulative) this.ackSeq = true;
    this.ackTimer ??= setTimeout(() => this.flushAcks(), this.options.ackDelayMs ?? DEFAULTS.ackDelayMs);
  }

  /** Writes the acks due: one cumulative ack for the logged messages, one per live-only message. */
  private flushAcks(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (this.current !== 'open' || this.user === null) return;
    const cursor = this.seqs[this.user];
    if (this.ackSeq && cursor !== undefined && cursor > 0) this.write({ type: 'ack', seq: cursor });
    for (const msg of this.ackMsgs) this.write({ type: 'ack', msg });
    this.ackSeq = false;
    this.ackMsgs = [];
    if (this.storage) store(this.storage, KEYS.seqs, JSON.stringify({ epoch: this.seqsEpoch, seqs: this.seqs }));
  }

  private scheduleRefresh(exp: number): void {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    if (typeof this.options.token !== 'function') return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(this.options.refreshMarginMs ?? DEFAULTS.refreshMarginMs, left / 3);
    this.refreshTimer = setTimeout(() => void this.refresh(), Math.max(0, left - margin));
  }

  /** Asks the token callback for a fresh token and hands it to the server on this connection. */
  private async refresh(): Promise<void> {
    this.refreshTimer = undefined;
    const generation = this.generation;
    let token: string | undefined;
    try {
      token = await (this.options.token as () => string | Promise<string>)();
    } catch (error) {
      if (generation === this.generation) {
        this.emit('error', new SwitchboardError('token_failed', `token callback failed: ${String(error)}`));
      }
      return;
    }
    if (generation !== this.generation || this.current !== 'open' || token === undefined) return;
    this.questions.push('refresh');
    this.write({ type: 'refresh', token });
  }

  private appHidden(): void {
    this.hidden = true;
    this.stopHeartbeat();
  }

  private appShown(): void {
    this.hidden = false;
    if (this.current === 'open') {
      // The socket may have died in the background without a word: ask now.
      this.stopHeartbeat();
      this.startHeartbeat();
      this.ping();
    } else {
      this.reconnectNow();
    }
  }

  /** Dials at once when waiting for the next attempt (back online, shown again). */
  private reconnectNow(): void {
    if (this.current !== 'waiting' || this.hidden) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    void this.dial();
  }

  /** Writes `send` again later, with every other held send, in order. */
  private hold(send: PendingSend): void {
    send.held = true;
    send.written = 0;
    if (this.resendTimer !== undefined) return;
    const ceiling = Math.min(this.reconnect.maxDelayMs, this.reconnect.initialDelayMs * 2 ** this.resendAttempt++);
    this.resendTimer = setTimeout(() => {
      this.resendTimer = undefined;
      for (const held of this.sends.values()) {
        if (!held.held) continue;
        held.held = false;
        this.writeSend(held);
      }
    }, jitter(ceiling));
  }

  private writeSend(send: PendingSend): void {
    send.written = ++this.writes;
    const frame: ClientFrame = { type: 'send', id: send.id, to: send.to, body: send.body };
    if (send.ephemeral) frame.ephemeral = true;
    this.write(frame);
  }

  private writePresence(query: PresenceQuery): void {
    this.questions.push(query);
    this.write(query.frame);
  }

  private write(frame: ClientFrame): void {
    if (this.socket && this.codec) this.socket.send(this.codec.encode(frame));
  }

  private startHeartbeat(): void {
    const heartbeat = this.options.heartbeat;
    if (heartbeat === false || !this.welcomed) return;
    this.heartbeatTimer = setInterval(() => this.ping(), heartbeat?.intervalMs ?? this.welcomed.heartbeat_ms);
  }

  private ping(): void {
    const heartbeat = this.options.heartbeat;
    if (heartbeat === false) return;
    const timeout = heartbeat?.timeoutMs ?? DEFAULTS.heartbeatTimeoutMs;
    this.questions.push('ping');
    this.write({ type: 'ping' });
    this.silenceTimer ??= setTimeout(() => this.drop(`no answer to ping within ${timeout}ms`), timeout);
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.silenceTimer);
    this.heartbeatTimer = this.silenceTimer = undefined;
  }

  /** Gives up on the current connection or attempt, and reconnects. */
  private drop(reason: string): void {
    this.socket?.close(1000, 'dropped by the client');
    this.lost(CloseCode.Abnormal, reason);
  }

  /**
   * The current connection or attempt ended with `code`: reconnect after a
   * delay, or when the app is shown again; after 4003, never.
   */
  private lost(code: number, reason: string): void {
    if (code === CloseCode.Disconnected) {
      this.stop(new SwitchboardError('disconnected', `disconnected by the server: ${reason}`));
      this.emit('disconnected', { code, reason });
      return;
    }
    if (code === CloseCode.FrameTooLarge) this.rejectOversizedSend();
    this.endConnection();
    this.attempt += 1;
    this.urlIndex += 1;
    let delayMs: number | null = null;
    // In the background a mini-program's sockets do not last (WeChat
    // interrupts them after 5 s): the next attempt waits for the app to be shown.
    if (!this.hidden) {
      delayMs = this.reconnectDelay(code);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = undefined;
        void this.dial();
      }, delayMs);
    }
    this.setState('waiting');
    this.emit('disconnect', { code, reason, delayMs });
  }

  /**
   * The node closes with 1009 at the first frame over its limit, after
   * answering every frame before it: the oldest unanswered send written on
   * this connection is the one. Written again, it would close every
   * connection the same way.
   */
  private rejectOversizedSend(): void {
    let oversized: PendingSend | undefined;
    for (const send of this.sends.values()) {
      if (send.written > 0 && (oversized === undefined || send.written < oversized.written)) oversized = send;
    }
    if (oversized === undefined) return;
    this.sends.delete(oversized.id);
    this.saveOutbox();
    oversized.reject?.(new SwitchboardError('frame_too_large', 'the node closed the connection on this send (1009)'));
  }

  /** Forgets the connection: its timers, its unanswered questions, what was written on it. */
  private endConnection(): void {
    this.generation += 1;
    this.socket = null;
    this.welcomed = null;
    this.stopHeartbeat();
    for (const timer of [this.connectTimer, this.resendTimer, this.ackTimer, this.refreshTimer]) clearTimeout(timer);
    this.connectTimer = this.resendTimer = this.ackTimer = this.refreshTimer = undefined;
    this.resendAttempt = 0;
    // Acks not written are lost with the connection: the replay brings
    // those messages again, and they are acked on the next one.
    this.ackSeq = false;
    this.ackMsgs = [];
    for (const send of [...this.sends.values()]) {
      send.written = 0;
      send.held = false;
      if (send.ephemeral) {
        this.sends.delete(send.id);
        send.reject?.(new SwitchboardError('connection_lost', 'the connection ended before the ephemeral send was answered'));
      }
    }
    this.questions = [];
  }

  private reconnectDelay(code: number): number {
    const { initialDelayMs, maxDelayMs, laterDelayMs } = this.reconnect;
    // The token expired: a fresh one is all it takes.
    if (code === CloseCode.TokenExpired) return 0;
    // The node is going away on purpose: go to the next one now, spread
    // over the first delay so that its clients do not all arrive at once.
    if (code === CloseCode.NodeRestarting) return Math.round(Math.random() * initialDelayMs);
    const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** (this.attempt - 1));
    return jitter(code === CloseCode.TryAgainLater ? Math.max(ceiling, laterDelayMs) : ceiling);
  }

  /** Stored sends of earlier clients on this storage: pending again, first, with their ids. */
  private restoreOutbox(): void {
    const stored = readJson<StoredSend[]>(this.storage, KEYS.outbox);
    if (!Array.isArray(stored)) return;
    for (const entry of stored) {
      const recipients = entry?.to;
      const valid = typeof entry?.id === 'string' && (typeof recipients === 'string' || Array.isArray(recipients));
      if (!valid || this.sends.has(entry.id)) continue;
      const { id, to, body = null } = entry;
      const user = typeof entry.user === 'string' ? entry.user : null;
      if (this.user !== null && user !== null && user !== this.user) {
        this.foreign.push({ user, id, to, body });
        continue;
      }
      this.sends.set(id, { id, to, body, user, ephemeral: false, written: 0, held: false });
    }
  }

  private saveOutbox(): void {
    if (!this.storage) return;
    const entries: StoredSend[] = [...this.foreign];
    for (const { user, id, to, body, ephemeral } of this.sends.values()) {
      if (!ephemeral) entries.push({ user, id, to, body });
    }
    store(this.storage, KEYS.outbox, JSON.stringify(entries));
  }

  private setState(state: ConnectionState): void {
    this.current = state;
    this.emit('state', state);
  }

  private emit<K extends keyof ClientEvents>(type: K, event: ClientEvents[K]): void {
    for (const listener of [...this.listeners[type]]) {
      try {
        listener(event);
      } catch (error) {
        // A failing listener must not break the connection; report it as uncaught.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
