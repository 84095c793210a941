// SwitchboardClient: one logical connection of one user, kept alive across
// the real connections under it. The server's guarantees hold per
// connection (docs/protocol.md); this client carries them across
// reconnects, so that an application sees each message once and each send
// answered once:
//
// - A send stays pending until its `accepted`. Pending sends are written
//   again, in order and with the same `id` and `to`, on every new
//   connection; the server answers a repeated id with the original
//   `accepted` instead of delivering it twice.
// - Every message is acked after the listeners saw it, and remembered by
//   `msg`: the replay of an inbox after a reconnect brings again what was
//   delivered but not acked in time, and a remembered message is acked
//   again without being shown again.
// - Reconnects back off exponentially with jitter, so that the clients of a
//   node that went away do not come back all at once; 1012 (node restarting)
//   reconnects at once to the next URL, 1013 (slow consumer) waits longer.

import {
  type Accepted,
  CloseCode,
  type ErrorFrame,
  type Json,
  MAX_PRESENCE_USERS,
  type Message,
  type PresenceAnswer,
  type Receipt,
  type ServerFrame,
  SUBPROTOCOL,
  SwitchboardError,
  type Welcome,
  isUserId,
  utf8Length,
} from './protocol.js';
import { type Transport, type TransportFactory, defaultTransport, withQuery } from './transports.js';

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
type Timer = ReturnType<typeof setTimeout>;

interface PendingSend {
  id: string;
  frame: string;
  resolve(accepted: Accepted): void;
  reject(error: SwitchboardError): void;
  /** Order of its write on the current connection; 0 while not written there. */
  written: number;
  /** Refused for now (`rate_limited`, `internal`): written again by the resend timer. */
  held: boolean;
}

interface PresenceQuery {
  /** The sorted, distinct users: the answer names exactly these. */
  key: string;
  frame: string;
  resolve(online: Record<string, boolean>): void;
  reject(error: SwitchboardError): void;
}

/** A frame written on the current connection that the server answers: a `ping` or a presence query. */
type Question = 'ping' | PresenceQuery;

/** Server error codes after which the same send is written again later. */
const RETRIED_CODES = new Set(['rate_limited', 'internal']);

const DEFAULTS = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  laterDelayMs: 5_000,
  heartbeatTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  rememberMessages: 10_000,
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

function closedError(): SwitchboardError {
  return new SwitchboardError('client_closed', 'the client was closed');
}

/** A promise rejected with `error`, marked as handled. */
function refused<T>(error: SwitchboardError): Promise<T> {
  return handled(Promise.reject(error));
}

export class SwitchboardClient {
  private readonly urls: readonly string[];
  private readonly options: ClientOptions;
  private readonly transport: TransportFactory;
  private readonly reconnect: Required<ReconnectOptions>;
  private readonly listeners: { [K in keyof ClientEvents]: Set<Listener<K>> } = {
    state: new Set(),
    welcome: new Set(),
    disconnect: new Set(),
    message: new Set(),
    receipt: new Set(),
    epoch: new Set(),
    error: new Set(),
  };

  private current: ConnectionState = 'idle';
  private socket: Transport | null = null;
  /** Bumped whenever a connection or attempt ends: reports from older ones are ignored. */
  private generation = 0;
  private welcomed: Welcome | null = null;
  private epoch: string | null = null;
  /** Failed attempts since the last `welcome`. */
  private attempt = 0;
  private urlIndex = 0;
  private waiters: Array<{ resolve(welcome: Welcome): void; reject(error: SwitchboardError): void }> = [];

  /** Sends without `accepted`, in the order they were made. */
  private readonly sends = new Map<string, PendingSend>();
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

  private reconnectTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private resendTimer: Timer | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private silenceTimer: Timer | undefined;

  constructor(options: ClientOptions) {
    this.urls = typeof options.url === 'string' ? [options.url] : [...options.url];
    if (this.urls.length === 0) throw new TypeError('url: give at least one');
    if (options.user !== undefined && !isUserId(options.user)) throw new TypeError(`user: invalid user id ${options.user}`);
    this.options = options;
    this.transport = options.transport ?? defaultTransport();
    this.reconnect = {
      initialDelayMs: options.reconnect?.initialDelayMs ?? DEFAULTS.initialDelayMs,
      maxDelayMs: options.reconnect?.maxDelayMs ?? DEFAULTS.maxDelayMs,
      laterDelayMs: options.reconnect?.laterDelayMs ?? DEFAULTS.laterDelayMs,
    };
  }

  get state(): ConnectionState {
    return this.current;
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
   * Sends `body` to user `to`. Resolves with the `accepted` answer, however
   * many reconnects it takes; rejects when the server refuses it for good
   * (`invalid_recipient`, `bad_frame`), when the node closed the connection
   * because of its size (`frame_too_large`), or when the client is closed.
   */
  send(to: string, body: Json = null, options: SendOptions = {}): Promise<Accepted> {
    if (this.current === 'closed') return refused(closedError());
    const id = options.id ?? `${this.idPrefix}-${++this.idCounter}`;
    const bytes = utf8Length(id);
    if (bytes < 1 || bytes > 64) return refused(new SwitchboardError('bad_frame', 'a send id is 1 to 64 bytes'));
    if (this.sends.has(id)) {
      return refused(new SwitchboardError('duplicate_id', `send ${id} is still waiting for its answer`));
    }
    return handled(new Promise((resolve, reject) => {
      const frame = JSON.stringify({ type: 'send', id, to, body });
      const send: PendingSend = { id, frame, resolve, reject, written: 0, held: false };
      this.sends.set(id, send);
      // Behind held sends it waits for their turn, so that order is kept.
      if (this.resendTimer !== undefined) send.held = true;
      else if (this.current === 'open') this.writeSend(send);
    }));
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
      const frame = JSON.stringify({ type: 'presence', users: distinct });
      const query: PresenceQuery = { key: distinct.join(','), frame, resolve, reject };
      this.presenceQueries.push(query);
      if (this.current === 'open') this.writePresence(query);
    }));
  }

  /** Closes the connection for good: pending sends and queries reject with `client_closed`. */
  close(): void {
    if (this.current === 'closed') return;
    const socket = this.socket;
    this.endConnection();
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    socket?.close(1000, 'client closed');
    const error = closedError();
    for (const send of this.sends.values()) send.reject(error);
    this.sends.clear();
    for (const query of this.presenceQueries) query.reject(error);
    this.presenceQueries = [];
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    this.setState('closed');
  }

  private async dial(): Promise<void> {
    const generation = ++this.generation;
    this.setState('connecting');
    let token: string | undefined;
    try {
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
    const url = this.options.user === undefined ? base : withQuery(base, 'user', this.options.user);
    const events = {
      message: (text: string) => generation === this.generation && this.receive(text),
      close: (code: number, reason: string) => generation === this.generation && this.lost(code, reason),
    };
    let socket: Transport;
    try {
      socket = this.transport({ url, token, protocol: SUBPROTOCOL }, events);
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

  private receive(text: string): void {
    let frame: ServerFrame | null = null;
    try {
      frame = JSON.parse(text) as ServerFrame | null;
    } catch {
      // Reported below.
    }
    if (typeof frame !== 'object' || frame === null) {
      this.emit('error', new SwitchboardError('unreadable_frame', `not a JSON object: ${text.slice(0, 100)}`));
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
      case 'pong': {
        const ping = this.questions.indexOf('ping');
        if (ping >= 0) this.questions.splice(ping, 1);
        return;
      }
      // Frame types added later are ignored, as unknown fields are.
    }
  }

  private opened(welcome: Welcome): void {
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.attempt = 0;
    this.welcomed = welcome;
    const previous = this.epoch;
    this.epoch = welcome.epoch;
    // What was pending goes out before any listener can add to it.
    this.current = 'open';
    for (const query of this.presenceQueries) this.writePresence(query);
    for (const send of this.sends.values()) this.writeSend(send);
    this.startHeartbeat(welcome.heartbeat_ms);
    this.emit('state', 'open');
    if (previous !== null && previous !== welcome.epoch) this.emit('epoch', { previous, current: welcome.epoch });
    this.emit('welcome', welcome);
    for (const waiter of this.waiters.splice(0)) waiter.resolve(welcome);
  }

  private accepted(frame: Accepted): void {
    const send = this.sends.get(frame.id);
    // A repeat of an answer already taken (a resend's) finds nothing.
    if (!send) return;
    this.sends.delete(frame.id);
    this.resendAttempt = 0;
    send.resolve(frame);
  }

  private refused(frame: ErrorFrame): void {
    const send = frame.id === undefined ? undefined : this.sends.get(frame.id);
    if (send && RETRIED_CODES.has(frame.code)) {
      this.hold(send);
    } else if (send) {
      this.sends.delete(send.id);
      send.reject(new SwitchboardError(frame.code, frame.message));
    } else if (frame.id === undefined) {
      this.refusedQuestion(frame);
    }
  }

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
  private refusedQuestion(frame: ErrorFrame): void {
    const oldest = this.questions[0];
    if (oldest !== undefined && (frame.code === 'rate_limited' || oldest !== 'ping')) {
      this.questions.shift();
      if (oldest === 'ping') return;
      this.presenceQueries = this.presenceQueries.filter((query) => query !== oldest);
      oldest.reject(new SwitchboardError(frame.code, frame.message));
      return;
    }
    this.emit('error', new SwitchboardError(frame.code, frame.message));
  }

  private answered(frame: PresenceAnswer): void {
    const key = Object.keys(frame.online).sort().join(',');
    const index = this.questions.findIndex((question) => question !== 'ping' && question.key === key);
    const query = this.questions[index];
    if (query === undefined || query === 'ping') return;
    this.questions.splice(index, 1);
    this.presenceQueries = this.presenceQueries.filter((pending) => pending !== query);
    query.resolve(frame.online);
  }

  private deliver(message: Message): void {
    if (!this.seen.has(message.msg)) {
      this.seen.add(message.msg);
      if (this.seen.size > (this.options.rememberMessages ?? DEFAULTS.rememberMessages)) {
        this.seen.delete(this.seen.values().next().value as string);
      }
      this.emit('message', message);
    }
    // A repeat is acked again: it came back because no ack reached the inbox.
    this.write(JSON.stringify({ type: 'ack', msg: message.msg }));
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
    this.write(send.frame);
  }

  private writePresence(query: PresenceQuery): void {
    this.questions.push(query);
    this.write(query.frame);
  }

  private write(text: string): void {
    this.socket?.send(text);
  }

  private startHeartbeat(serverIntervalMs: number): void {
    const heartbeat = this.options.heartbeat;
    if (heartbeat === false) return;
    const timeout = heartbeat?.timeoutMs ?? DEFAULTS.heartbeatTimeoutMs;
    this.heartbeatTimer = setInterval(() => {
      this.questions.push('ping');
      this.write('{"type":"ping"}');
      this.silenceTimer ??= setTimeout(() => this.drop(`no answer to ping within ${timeout}ms`), timeout);
    }, heartbeat?.intervalMs ?? serverIntervalMs);
  }

  /** Gives up on the current connection or attempt, and reconnects. */
  private drop(reason: string): void {
    this.socket?.close(1000, 'dropped by the client');
    this.lost(CloseCode.Abnormal, reason);
  }

  /** The current connection or attempt ended with `code`: reconnect after a delay. */
  private lost(code: number, reason: string): void {
    if (code === CloseCode.FrameTooLarge) this.rejectOversizedSend();
    this.endConnection();
    const delayMs = this.reconnectDelay(code);
    this.attempt += 1;
    this.urlIndex += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.dial();
    }, delayMs);
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
    oversized.reject(new SwitchboardError('frame_too_large', 'the node closed the connection on this send (1009)'));
  }

  /** Forgets the connection: its timers, its unanswered questions, what was written on it. */
  private endConnection(): void {
    this.generation += 1;
    this.socket = null;
    this.welcomed = null;
    for (const timer of [this.connectTimer, this.resendTimer, this.silenceTimer]) clearTimeout(timer);
    clearInterval(this.heartbeatTimer);
    this.connectTimer = this.resendTimer = this.silenceTimer = this.heartbeatTimer = undefined;
    this.resendAttempt = 0;
    for (const send of this.sends.values()) {
      send.written = 0;
      send.held = false;
    }
    this.questions = [];
  }

  private reconnectDelay(code: number): number {
    const { initialDelayMs, maxDelayMs, laterDelayMs } = this.reconnect;
    // The node is going away on purpose: go to the next one now, spread
    // over the first delay so that its clients do not all arrive at once.
    if (code === CloseCode.NodeRestarting) return Math.round(Math.random() * initialDelayMs);
    const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** this.attempt);
    return jitter(code === CloseCode.TryAgainLater ? Math.max(ceiling, laterDelayMs) : ceiling);
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
