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
import { CloseCode, MAX_PRESENCE_USERS, SUBPROTOCOL, SwitchboardError, isUserId, utf8Length, } from './protocol.js';
import { defaultTransport, withQuery } from './transports.js';
/** Server error codes after which the same send is written again later. */
const RETRIED_CODES = new Set(['rate_limited', 'internal']);
const DEFAULTS = {
    initialDelayMs: 500,
    maxDelayMs: 30000,
    laterDelayMs: 5000,
    heartbeatTimeoutMs: 10000,
    connectTimeoutMs: 10000,
    rememberMessages: 10000,
};
/** A delay between half of `ceiling` and `ceiling`: spread out, never a hot loop. */
function jitter(ceiling) {
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}
/**
 * `promise`, marked as handled: a caller that does not wait for an answer
 * (a send whose receipt is all it wants, a `connect()` before `close()`)
 * gets no unhandled rejection; one that awaits still sees the failure.
 */
function handled(promise) {
    promise.catch(() => undefined);
    return promise;
}
function closedError() {
    return new SwitchboardError('client_closed', 'the client was closed');
}
/** A promise rejected with `error`, marked as handled. */
function refused(error) {
    return handled(Promise.reject(error));
}
export class SwitchboardClient {
    constructor(options) {
        var _a, _b, _c, _d, _e, _f, _g;
        this.listeners = {
            state: new Set(),
            welcome: new Set(),
            disconnect: new Set(),
            message: new Set(),
            receipt: new Set(),
            epoch: new Set(),
            error: new Set(),
        };
        this.current = 'idle';
        this.socket = null;
        /** Bumped whenever a connection or attempt ends: reports from older ones are ignored. */
        this.generation = 0;
        this.welcomed = null;
        this.epoch = null;
        /** Failed attempts since the last `welcome`. */
        this.attempt = 0;
        this.urlIndex = 0;
        this.waiters = [];
        /** Sends without `accepted`, in the order they were made. */
        this.sends = new Map();
        this.writes = 0;
        this.idPrefix = Math.random().toString(36).slice(2, 12);
        this.idCounter = 0;
        /** Consecutive resend rounds without an `accepted`. */
        this.resendAttempt = 0;
        this.presenceQueries = [];
        /** What the server has yet to answer on this connection, in the order it was written. */
        this.questions = [];
        /** Received message ids, oldest first. */
        this.seen = new Set();
        this.urls = typeof options.url === 'string' ? [options.url] : [...options.url];
        if (this.urls.length === 0)
            throw new TypeError('url: give at least one');
        if (options.user !== undefined && !isUserId(options.user))
            throw new TypeError(`user: invalid user id ${options.user}`);
        this.options = options;
        this.transport = (_a = options.transport) !== null && _a !== void 0 ? _a : defaultTransport();
        this.reconnect = {
            initialDelayMs: (_c = (_b = options.reconnect) === null || _b === void 0 ? void 0 : _b.initialDelayMs) !== null && _c !== void 0 ? _c : DEFAULTS.initialDelayMs,
            maxDelayMs: (_e = (_d = options.reconnect) === null || _d === void 0 ? void 0 : _d.maxDelayMs) !== null && _e !== void 0 ? _e : DEFAULTS.maxDelayMs,
            laterDelayMs: (_g = (_f = options.reconnect) === null || _f === void 0 ? void 0 : _f.laterDelayMs) !== null && _g !== void 0 ? _g : DEFAULTS.laterDelayMs,
        };
    }
    get state() {
        return this.current;
    }
    /** Adds a listener; the function returned removes it. */
    on(type, listener) {
        this.listeners[type].add(listener);
        return () => this.listeners[type].delete(listener);
    }
    /**
     * Starts connecting, and keeps the client connected until `close()`.
     * Resolves with the next `welcome` (the current one when open); rejects
     * only when the client is closed first.
     */
    connect() {
        if (this.current === 'closed')
            return refused(closedError());
        if (this.welcomed)
            return Promise.resolve(this.welcomed);
        const welcome = handled(new Promise((resolve, reject) => this.waiters.push({ resolve, reject })));
        if (this.current === 'idle')
            void this.dial();
        return welcome;
    }
    /**
     * Sends `body` to user `to`. Resolves with the `accepted` answer, however
     * many reconnects it takes; rejects when the server refuses it for good
     * (`invalid_recipient`, `bad_frame`), when the node closed the connection
     * because of its size (`frame_too_large`), or when the client is closed.
     */
    send(to, body = null, options = {}) {
        var _a;
        if (this.current === 'closed')
            return refused(closedError());
        const id = (_a = options.id) !== null && _a !== void 0 ? _a : `${this.idPrefix}-${++this.idCounter}`;
        const bytes = utf8Length(id);
        if (bytes < 1 || bytes > 64)
            return refused(new SwitchboardError('bad_frame', 'a send id is 1 to 64 bytes'));
        if (this.sends.has(id)) {
            return refused(new SwitchboardError('duplicate_id', `send ${id} is still waiting for its answer`));
        }
        return handled(new Promise((resolve, reject) => {
            const frame = JSON.stringify({ type: 'send', id, to, body });
            const send = { id, frame, resolve, reject, written: 0, held: false };
            this.sends.set(id, send);
            // Behind held sends it waits for their turn, so that order is kept.
            if (this.resendTimer !== undefined)
                send.held = true;
            else if (this.current === 'open')
                this.writeSend(send);
        }));
    }
    /** Which of `users` (0 to 100 valid user ids) are online, answered once connected. */
    presence(users) {
        if (this.current === 'closed')
            return refused(closedError());
        if (users.length > MAX_PRESENCE_USERS) {
            return refused(new SwitchboardError('too_large', `at most ${MAX_PRESENCE_USERS} users in one query`));
        }
        const invalid = users.find((user) => !isUserId(user));
        if (invalid !== undefined)
            return refused(new SwitchboardError('bad_frame', `invalid user id ${invalid}`));
        if (users.length === 0)
            return Promise.resolve({});
        const distinct = [...new Set(users)].sort();
        return handled(new Promise((resolve, reject) => {
            const frame = JSON.stringify({ type: 'presence', users: distinct });
            const query = { key: distinct.join(','), frame, resolve, reject };
            this.presenceQueries.push(query);
            if (this.current === 'open')
                this.writePresence(query);
        }));
    }
    /** Closes the connection for good: pending sends and queries reject with `client_closed`. */
    close() {
        if (this.current === 'closed')
            return;
        const socket = this.socket;
        this.endConnection();
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = undefined;
        socket === null || socket === void 0 ? void 0 : socket.close(1000, 'client closed');
        const error = closedError();
        for (const send of this.sends.values())
            send.reject(error);
        this.sends.clear();
        for (const query of this.presenceQueries)
            query.reject(error);
        this.presenceQueries = [];
        for (const waiter of this.waiters.splice(0))
            waiter.reject(error);
        this.setState('closed');
    }
    async dial() {
        var _a;
        const generation = ++this.generation;
        this.setState('connecting');
        let token;
        try {
            const source = this.options.token;
            token = typeof source === 'function' ? await source() : source;
        }
        catch (error) {
            if (generation !== this.generation)
                return;
            this.emit('error', new SwitchboardError('token_failed', `token callback failed: ${String(error)}`));
            this.lost(CloseCode.Abnormal, 'no token');
            return;
        }
        // Closed while the token was on its way.
        if (generation !== this.generation)
            return;
        const base = this.urls[this.urlIndex % this.urls.length];
        const url = this.options.user === undefined ? base : withQuery(base, 'user', this.options.user);
        const events = {
            message: (text) => generation === this.generation && this.receive(text),
            close: (code, reason) => generation === this.generation && this.lost(code, reason),
        };
        let socket;
        try {
            socket = this.transport({ url, token, protocol: SUBPROTOCOL }, events);
        }
        catch (error) {
            this.emit('error', new SwitchboardError('transport_failed', `cannot open ${base}: ${String(error)}`));
            this.lost(CloseCode.Abnormal, 'transport failed');
            return;
        }
        // A transport may report a failure before it returns.
        if (generation !== this.generation)
            return;
        this.socket = socket;
        const timeout = (_a = this.options.connectTimeoutMs) !== null && _a !== void 0 ? _a : DEFAULTS.connectTimeoutMs;
        this.connectTimer = setTimeout(() => this.drop(`no welcome within ${timeout}ms`), timeout);
    }
    receive(text) {
        let frame = null;
        try {
            frame = JSON.parse(text);
        }
        catch (_a) {
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
                if (ping >= 0)
                    this.questions.splice(ping, 1);
                return;
            }
            // Frame types added later are ignored, as unknown fields are.
        }
    }
    opened(welcome) {
        clearTimeout(this.connectTimer);
        this.connectTimer = undefined;
        this.attempt = 0;
        this.welcomed = welcome;
        const previous = this.epoch;
        this.epoch = welcome.epoch;
        // What was pending goes out before any listener can add to it.
        this.current = 'open';
        for (const query of this.presenceQueries)
            this.writePresence(query);
        for (const send of this.sends.values())
            this.writeSend(send);
        this.startHeartbeat(welcome.heartbeat_ms);
        this.emit('state', 'open');
        if (previous !== null && previous !== welcome.epoch)
            this.emit('epoch', { previous, current: welcome.epoch });
        this.emit('welcome', welcome);
        for (const waiter of this.waiters.splice(0))
            waiter.resolve(welcome);
    }
    accepted(frame) {
        const send = this.sends.get(frame.id);
        // A repeat of an answer already taken (a resend's) finds nothing.
        if (!send)
            return;
        this.sends.delete(frame.id);
        this.resendAttempt = 0;
        send.resolve(frame);
    }
    refused(frame) {
        const send = frame.id === undefined ? undefined : this.sends.get(frame.id);
        if (send && RETRIED_CODES.has(frame.code)) {
            this.hold(send);
        }
        else if (send) {
            this.sends.delete(send.id);
            send.reject(new SwitchboardError(frame.code, frame.message));
        }
        else if (frame.id === undefined) {
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
    refusedQuestion(frame) {
        const oldest = this.questions[0];
        if (oldest !== undefined && (frame.code === 'rate_limited' || oldest !== 'ping')) {
            this.questions.shift();
            if (oldest === 'ping')
                return;
            this.presenceQueries = this.presenceQueries.filter((query) => query !== oldest);
            oldest.reject(new SwitchboardError(frame.code, frame.message));
            return;
        }
        this.emit('error', new SwitchboardError(frame.code, frame.message));
    }
    answered(frame) {
        const key = Object.keys(frame.online).sort().join(',');
        const index = this.questions.findIndex((question) => question !== 'ping' && question.key === key);
        const query = this.questions[index];
        if (query === undefined || query === 'ping')
            return;
        this.questions.splice(index, 1);
        this.presenceQueries = this.presenceQueries.filter((pending) => pending !== query);
        query.resolve(frame.online);
    }
    deliver(message) {
        var _a;
        if (!this.seen.has(message.msg)) {
            this.seen.add(message.msg);
            if (this.seen.size > ((_a = this.options.rememberMessages) !== null && _a !== void 0 ? _a : DEFAULTS.rememberMessages)) {
                this.seen.delete(this.seen.values().next().value);
            }
            this.emit('message', message);
        }
        // A repeat is acked again: it came back because no ack reached the inbox.
        this.write(JSON.stringify({ type: 'ack', msg: message.msg }));
    }
    /** Writes `send` again later, with every other held send, in order. */
    hold(send) {
        send.held = true;
        send.written = 0;
        if (this.resendTimer !== undefined)
            return;
        const ceiling = Math.min(this.reconnect.maxDelayMs, this.reconnect.initialDelayMs * 2 ** this.resendAttempt++);
        this.resendTimer = setTimeout(() => {
            this.resendTimer = undefined;
            for (const held of this.sends.values()) {
                if (!held.held)
                    continue;
                held.held = false;
                this.writeSend(held);
            }
        }, jitter(ceiling));
    }
    writeSend(send) {
        send.written = ++this.writes;
        this.write(send.frame);
    }
    writePresence(query) {
        this.questions.push(query);
        this.write(query.frame);
    }
    write(text) {
        var _a;
        (_a = this.socket) === null || _a === void 0 ? void 0 : _a.send(text);
    }
    startHeartbeat(serverIntervalMs) {
        var _a, _b;
        const heartbeat = this.options.heartbeat;
        if (heartbeat === false)
            return;
        const timeout = (_a = heartbeat === null || heartbeat === void 0 ? void 0 : heartbeat.timeoutMs) !== null && _a !== void 0 ? _a : DEFAULTS.heartbeatTimeoutMs;
        this.heartbeatTimer = setInterval(() => {
            var _a;
            this.questions.push('ping');
            this.write('{"type":"ping"}');
            (_a = this.silenceTimer) !== null && _a !== void 0 ? _a : (this.silenceTimer = setTimeout(() => this.drop(`no answer to ping within ${timeout}ms`), timeout));
        }, (_b = heartbeat === null || heartbeat === void 0 ? void 0 : heartbeat.intervalMs) !== null && _b !== void 0 ? _b : serverIntervalMs);
    }
    /** Gives up on the current connection or attempt, and reconnects. */
    drop(reason) {
        var _a;
        (_a = this.socket) === null || _a === void 0 ? void 0 : _a.close(1000, 'dropped by the client');
        this.lost(CloseCode.Abnormal, reason);
    }
    /** The current connection or attempt ended with `code`: reconnect after a delay. */
    lost(code, reason) {
        if (code === CloseCode.FrameTooLarge)
            this.rejectOversizedSend();
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
    rejectOversizedSend() {
        let oversized;
        for (const send of this.sends.values()) {
            if (send.written > 0 && (oversized === undefined || send.written < oversized.written))
                oversized = send;
        }
        if (oversized === undefined)
            return;
        this.sends.delete(oversized.id);
        oversized.reject(new SwitchboardError('frame_too_large', 'the node closed the connection on this send (1009)'));
    }
    /** Forgets the connection: its timers, its unanswered questions, what was written on it. */
    endConnection() {
        this.generation += 1;
        this.socket = null;
        this.welcomed = null;
        for (const timer of [this.connectTimer, this.resendTimer, this.silenceTimer])
            clearTimeout(timer);
        clearInterval(this.heartbeatTimer);
        this.connectTimer = this.resendTimer = this.silenceTimer = this.heartbeatTimer = undefined;
        this.resendAttempt = 0;
        for (const send of this.sends.values()) {
            send.written = 0;
            send.held = false;
        }
        this.questions = [];
    }
    reconnectDelay(code) {
        const { initialDelayMs, maxDelayMs, laterDelayMs } = this.reconnect;
        // The node is going away on purpose: go to the next one now, spread
        // over the first delay so that its clients do not all arrive at once.
        if (code === CloseCode.NodeRestarting)
            return Math.round(Math.random() * initialDelayMs);
        const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** this.attempt);
        return jitter(code === CloseCode.TryAgainLater ? Math.max(ceiling, laterDelayMs) : ceiling);
    }
    setState(state) {
        this.current = state;
        this.emit('state', state);
    }
    emit(type, event) {
        for (const listener of [...this.listeners[type]]) {
            try {
                listener(event);
            }
            catch (error) {
                // A failing listener must not break the connection; report it as uncaught.
                setTimeout(() => {
                    throw error;
                });
            }
        }
    }
}
