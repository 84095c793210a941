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
import { CloseCode, MAX_PRESENCE_USERS, SwitchboardError, isDeviceId, isUserId, jsonCodec, utf8Length, } from './protocol.js';
import { defaultLifecycle, defaultStorage, defaultTransport, withQuery, } from './transports.js';
/** The body of the ephemeral sends `typing()` makes. */
export const TYPING_BODY = { switchboard: 'typing' };
/** Server error codes after which the same send is written again later. */
const RETRIED_CODES = new Set(['rate_limited', 'internal']);
const KEYS = {
    device: 'switchboard.device',
    seqs: 'switchboard.seqs',
    outbox: 'switchboard.outbox',
};
const DEFAULTS = {
    initialDelayMs: 500,
    maxDelayMs: 30000,
    laterDelayMs: 5000,
    heartbeatTimeoutMs: 10000,
    connectTimeoutMs: 10000,
    rememberMessages: 10000,
    ackDelayMs: 100,
    gapTimeoutMs: 3000,
    typingIntervalMs: 3000,
    refreshMarginMs: 60000,
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
/** A promise rejected with `error`, marked as handled. */
function refused(error) {
    return handled(Promise.reject(error));
}
function closedError() {
    return new SwitchboardError('client_closed', 'the client was closed');
}
/** A device id: 20 random characters, from `crypto` where there is one. */
function newDeviceId() {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
    const bytes = new Uint8Array(20);
    const crypto = globalThis.crypto;
    if (crypto)
        crypto.getRandomValues(bytes);
    else
        for (let index = 0; index < bytes.length; index++)
            bytes[index] = Math.floor(Math.random() * 256);
    let id = 'd-';
    for (const byte of bytes)
        id += alphabet[byte % alphabet.length];
    return id;
}
function readJson(storage, key) {
    try {
        const text = storage === null || storage === void 0 ? void 0 : storage.getItem(key);
        return text ? JSON.parse(text) : undefined;
    }
    catch (_a) {
        return undefined;
    }
}
/**
 * Writes to storage, in the background where it can. Storage is best
 * effort: a full or forbidden one (quota exceeded, private mode) costs
 * what it would have kept across a restart, never a send.
 */
function store(storage, key, value, now = false) {
    try {
        if (!storage)
            return;
        if (now || !storage.setItemLater)
            storage.setItem(key, value);
        else
            storage.setItemLater(key, value);
    }
    catch (_a) {
        // Kept in memory only.
    }
}
/** Whether `value` can be a `since`: a whole number. */
function isSeq(value) {
    return Number.isSafeInteger(value) && value >= 0;
}
function isTyping(message) {
    const body = message.body;
    return (message.seq === undefined &&
        typeof body === 'object' &&
        body !== null &&
        !Array.isArray(body) &&
        body.switchboard === TYPING_BODY.switchboard &&
        Object.keys(body).length === 1);
}
export class SwitchboardClient {
    constructor(options) {
        var _a, _b, _c, _d, _e, _f, _g, _h, _j, _k, _l, _m, _o, _p, _q;
        this.listeners = {
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
        /** Whether the app is in the background (mini-programs): no heartbeats, no reconnects. */
        this.hidden = false;
        /** Sends without `accepted`, in the order they were made. */
        this.sends = new Map();
        /** Stored sends of another user than this client's: kept in storage as they are. */
        this.foreign = [];
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
        /** When `typing()` last sent to each set of recipients. */
        this.typingSent = new Map();
        /** Per user: every seq up to this one was processed (or reported as a gap). */
        this.seqs = {};
        /** The epoch `seqs` belong to. */
        this.seqsEpoch = null;
        /** Processed seqs of the current user above its cursor, past a missing one. */
        this.ahead = new Set();
        /** Seqs reported as gaps: a message that still comes with one of them is shown. */
        this.passed = new Set();
        /** The latest seq of the current connection's `welcome`. */
        this.welcomeSeq = 0;
        /** The cumulative ack is due on this connection. */
        this.ackSeq = false;
        /** `msg` acks due on this connection (messages without `seq`). */
        this.ackMsgs = [];
        this.shown = () => this.appShown();
        this.hide = () => this.appHidden();
        this.network = (result) => {
            if (result.isConnected)
                this.reconnectNow();
        };
        this.urls = typeof options.url === 'string' ? [options.url] : [...options.url];
        if (this.urls.length === 0)
            throw new TypeError('url: give at least one');
        if (options.user !== undefined && !isUserId(options.user))
            throw new TypeError(`user: invalid user id ${options.user}`);
        if (options.device !== undefined && !isDeviceId(options.device)) {
            throw new TypeError(`device: invalid device id ${options.device}`);
        }
        if (options.since !== undefined && !isSeq(options.since))
            throw new TypeError(`since: not a whole number: ${options.since}`);
        this.options = options;
        this.transport = (_a = options.transport) !== null && _a !== void 0 ? _a : defaultTransport();
        this.storage = options.storage === null ? undefined : ((_b = options.storage) !== null && _b !== void 0 ? _b : defaultStorage());
        this.app = options.app === null ? undefined : ((_c = options.app) !== null && _c !== void 0 ? _c : defaultLifecycle());
        this.reconnect = {
            initialDelayMs: (_e = (_d = options.reconnect) === null || _d === void 0 ? void 0 : _d.initialDelayMs) !== null && _e !== void 0 ? _e : DEFAULTS.initialDelayMs,
            maxDelayMs: (_g = (_f = options.reconnect) === null || _f === void 0 ? void 0 : _f.maxDelayMs) !== null && _g !== void 0 ? _g : DEFAULTS.maxDelayMs,
            laterDelayMs: (_j = (_h = options.reconnect) === null || _h === void 0 ? void 0 : _h.laterDelayMs) !== null && _j !== void 0 ? _j : DEFAULTS.laterDelayMs,
        };
        if (typeof options.codec === 'object')
            this.codec = options.codec;
        else if (options.codec !== 'msgpack')
            this.codec = jsonCodec;
        this.since = options.since;
        this.user = (_k = options.user) !== null && _k !== void 0 ? _k : null;
        this.device = (_l = options.device) !== null && _l !== void 0 ? _l : this.storedDevice();
        const stored = readJson(this.storage, KEYS.seqs);
        if (stored && typeof stored.epoch === 'string' && typeof stored.seqs === 'object' && stored.seqs !== null) {
            this.seqsEpoch = stored.epoch;
            this.seqs = stored.seqs;
        }
        this.restoreOutbox();
        (_m = this.app) === null || _m === void 0 ? void 0 : _m.onAppShow(this.shown);
        (_o = this.app) === null || _o === void 0 ? void 0 : _o.onAppHide(this.hide);
        (_q = (_p = this.app) === null || _p === void 0 ? void 0 : _p.onNetworkStatusChange) === null || _q === void 0 ? void 0 : _q.call(_p, this.network);
    }
    get state() {
        return this.current;
    }
    /** The seq up to which the current user's messages were processed, once known. */
    get seq() {
        return this.user === null ? undefined : this.seqs[this.user];
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
     * Connects again now, and has the server replay the log after `since`
     * (acked or not): messages after it are shown again. For an application
     * that lost what it had received. Resolves with the new `welcome`.
     */
    resync(since) {
        if (this.current === 'closed')
            return refused(closedError());
        if (!isSeq(since))
            return refused(new SwitchboardError('bad_frame', `since: not a whole number: ${since}`));
        this.since = since;
        const welcome = handled(new Promise((resolve, reject) => this.waiters.push({ resolve, reject })));
        if (this.current === 'open' || this.current === 'connecting') {
            const socket = this.socket;
            this.endConnection();
            socket === null || socket === void 0 ? void 0 : socket.close(1000, 'resync');
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
    send(to, body = null, options = {}) {
        var _a;
        if (this.current === 'closed')
            return refused(closedError());
        const ephemeral = options.ephemeral === true;
        if (ephemeral && this.current !== 'open') {
            return refused(new SwitchboardError('not_connected', 'an ephemeral send needs an open connection'));
        }
        const id = (_a = options.id) !== null && _a !== void 0 ? _a : `${this.idPrefix}-${++this.idCounter}`;
        const bytes = utf8Length(id);
        if (bytes < 1 || bytes > 64)
            return refused(new SwitchboardError('bad_frame', 'a send id is 1 to 64 bytes'));
        if (this.sends.has(id)) {
            return refused(new SwitchboardError('duplicate_id', `send ${id} is still waiting for its answer`));
        }
        const recipients = typeof to === 'string' ? to : [...to];
        return handled(new Promise((resolve, reject) => {
            const send = { id, to: recipients, body, ephemeral, user: this.user, resolve, reject, written: 0, held: false };
            this.sends.set(id, send);
            if (!ephemeral)
                this.saveOutbox();
            // Behind held sends it waits for their turn, so that order is kept.
            if (this.resendTimer !== undefined && !ephemeral)
                send.held = true;
            else if (this.current === 'open')
                this.writeSend(send);
        }));
    }
    /**
     * Tells `to` that this user is typing: an ephemeral send of
     * `TYPING_BODY`, at most once per `typingIntervalMs` for the same
     * recipients, only while connected. Returns whether it sent one.
     */
    typing(to) {
        var _a;
        if (this.current !== 'open')
            return false;
        const key = typeof to === 'string' ? to : [...to].sort().join(',');
        const now = Date.now();
        const last = this.typingSent.get(key);
        if (last !== undefined && now - last < ((_a = this.options.typingIntervalMs) !== null && _a !== void 0 ? _a : DEFAULTS.typingIntervalMs))
            return false;
        this.typingSent.set(key, now);
        void this.send(to, Object.assign({}, TYPING_BODY), { ephemeral: true });
        return true;
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
            const query = { key: distinct.join(','), frame: { type: 'presence', users: distinct }, resolve, reject };
            this.presenceQueries.push(query);
            if (this.current === 'open')
                this.writePresence(query);
        }));
    }
    /**
     * Closes the connection for good: pending sends and queries reject with
     * `client_closed`, and the rejected sends leave storage.
     */
    close() {
        this.stop(closedError());
    }
    stop(error) {
        var _a, _b, _c, _d, _e, _f, _g;
        if (this.current === 'closed')
            return;
        const socket = this.socket;
        this.endConnection();
        clearTimeout(this.reconnectTimer);
        clearTimeout(this.gapTimer);
        this.reconnectTimer = this.gapTimer = undefined;
        socket === null || socket === void 0 ? void 0 : socket.close(1000, 'client closed');
        for (const send of this.sends.values())
            (_a = send.reject) === null || _a === void 0 ? void 0 : _a.call(send, error);
        this.sends.clear();
        this.saveOutbox();
        for (const query of this.presenceQueries)
            query.reject(error);
        this.presenceQueries = [];
        for (const waiter of this.waiters.splice(0))
            waiter.reject(error);
        (_c = (_b = this.app) === null || _b === void 0 ? void 0 : _b.offAppShow) === null || _c === void 0 ? void 0 : _c.call(_b, this.shown);
        (_e = (_d = this.app) === null || _d === void 0 ? void 0 : _d.offAppHide) === null || _e === void 0 ? void 0 : _e.call(_d, this.hide);
        (_g = (_f = this.app) === null || _f === void 0 ? void 0 : _f.offNetworkStatusChange) === null || _g === void 0 ? void 0 : _g.call(_f, this.network);
        this.setState('closed');
    }
    storedDevice() {
        var _a;
        let stored;
        try {
            stored = (_a = this.storage) === null || _a === void 0 ? void 0 : _a.getItem(KEYS.device);
        }
        catch (_b) {
            stored = undefined;
        }
        if (stored && isDeviceId(stored))
            return stored;
        const device = newDeviceId();
        store(this.storage, KEYS.device, device, true);
        return device;
    }
    async dial() {
        var _a, _b;
        const generation = ++this.generation;
        this.setState('connecting');
        let token;
        try {
            (_a = this.codec) !== null && _a !== void 0 ? _a : (this.codec = (await import('./msgpack.js')).msgpackCodec);
        }
        catch (error) {
            if (generation !== this.generation)
                return;
            this.emit('error', new SwitchboardError('transport_failed', `cannot load the MessagePack codec: ${String(error)}`));
            this.lost(CloseCode.Abnormal, 'no codec');
            return;
        }
        try {
            // No await for a token given as a string: the socket opens at once.
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
        let url = this.options.user === undefined ? base : withQuery(base, 'user', this.options.user);
        url = withQuery(url, 'device', this.device);
        if (this.since !== undefined)
            url = withQuery(url, 'since', String(this.since));
        const events = {
            message: (data) => generation === this.generation && this.receive(data),
            close: (code, reason) => generation === this.generation && this.lost(code, reason),
        };
        let socket;
        try {
            socket = this.transport({ url, token, protocol: this.codec.protocol }, events);
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
        const timeout = (_b = this.options.connectTimeoutMs) !== null && _b !== void 0 ? _b : DEFAULTS.connectTimeoutMs;
        this.connectTimer = setTimeout(() => this.drop(`no welcome within ${timeout}ms`), timeout);
    }
    receive(data) {
        let frame = null;
        try {
            frame = this.codec.decode(data);
        }
        catch (_a) {
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
    answer(kind) {
        const index = this.questions.indexOf(kind);
        if (index >= 0)
            this.questions.splice(index, 1);
    }
    opened(welcome) {
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
        for (const query of this.presenceQueries)
            this.writePresence(query);
        for (const send of this.sends.values())
            this.writeSend(send);
        if (!this.hidden)
            this.startHeartbeat();
        if (welcome.exp !== undefined)
            this.scheduleRefresh(welcome.exp);
        this.emit('state', 'open');
        if (previous !== null && previous !== welcome.epoch)
            this.emit('epoch', { previous, current: welcome.epoch });
        this.emit('welcome', welcome);
        for (const waiter of this.waiters.splice(0))
            waiter.resolve(welcome);
    }
    /**
     * The `welcome` names the user: sends made before anyone was named become
     * its own, and restored sends of another user are left in storage.
     */
    adoptUser(user) {
        if (this.user !== user) {
            this.ahead.clear();
            this.passed.clear();
        }
        this.user = user;
        let changed = false;
        for (const send of [...this.sends.values()]) {
            if (send.user === user)
                continue;
            changed = true;
            if (send.user === null) {
                send.user = user;
            }
            else {
                this.sends.delete(send.id);
                this.foreign.push({ user: send.user, id: send.id, to: send.to, body: send.body });
            }
        }
        if (changed)
            this.saveOutbox();
    }
    /** Where this connection's seqs start from, by the `welcome`'s epoch and seq and the `since` asked for. */
    syncCursor(welcome) {
        var _a;
        const user = welcome.user;
        if (this.seqsEpoch !== welcome.epoch) {
            // Seqs belong to an epoch: a new one starts them again.
            this.seqs = {};
            this.seqsEpoch = welcome.epoch;
            this.ahead.clear();
            this.passed.clear();
        }
        this.welcomeSeq = (_a = welcome.seq) !== null && _a !== void 0 ? _a : 0;
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
        if (cursor !== undefined && cursor > this.welcomeSeq)
            delete this.seqs[user];
    }
    accepted(frame) {
        var _a;
        const send = this.sends.get(frame.id);
        // A repeat of an answer already taken (a resend's) finds nothing.
        if (!send)
            return;
        this.sends.delete(frame.id);
        if (!send.ephemeral)
            this.saveOutbox();
        this.resendAttempt = 0;
        if (!send.ephemeral)
            this.emit('accepted', frame);
        (_a = send.resolve) === null || _a === void 0 ? void 0 : _a.call(send, frame);
    }
    refused(frame) {
        var _a;
        const send = frame.id === undefined ? undefined : this.sends.get(frame.id);
        if (send && RETRIED_CODES.has(frame.code) && !send.ephemeral) {
            this.hold(send);
        }
        else if (send) {
            this.sends.delete(send.id);
            if (!send.ephemeral)
                this.saveOutbox();
            (_a = send.reject) === null || _a === void 0 ? void 0 : _a.call(send, new SwitchboardError(frame.code, frame.message));
        }
        else if (frame.id === undefined && frame.code === 'bad_token') {
            // The connection lasts until its token expires (close 4001), and
            // the next connection gets a fresh token.
            this.answer('refresh');
            this.emit('error', new SwitchboardError(frame.code, frame.message));
        }
        else if (frame.id === undefined) {
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
    refusedQuestion(frame) {
        const oldest = this.questions[0];
        const isQuery = oldest !== undefined && oldest !== 'ping' && oldest !== 'refresh';
        if (oldest !== undefined && (frame.code === 'rate_limited' || isQuery)) {
            this.questions.shift();
            if (oldest === 'ping')
                return;
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
    answered(frame) {
        const key = Object.keys(frame.online).sort().join(',');
        const index = this.questions.findIndex((question) => typeof question === 'object' && question.key === key);
        const query = this.questions[index];
        if (typeof query !== 'object')
            return;
        this.questions.splice(index, 1);
        this.presenceQueries = this.presenceQueries.filter((pending) => pending !== query);
        query.resolve(frame.online);
    }
    deliver(message) {
        var _a, _b;
        if (isTyping(message)) {
            this.emit('typing', { from: message.from, to: message.to });
            return;
        }
        if (message.seq === undefined || message.to !== this.user) {
            // Live only: no cursor to move, acked by its id (for its receipt).
            if (this.remember(message.msg))
                this.emit('message', message);
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
            if (seq <= cursor)
                this.scheduleAck(true);
            return;
        }
        this.remember(message.msg);
        this.passed.delete(seq);
        this.emit('message', message);
        if (late)
            return;
        if (seq === cursor + 1) {
            this.advance(user, seq);
            this.scheduleAck(true);
        }
        else {
            // Past a missing seq: acked once the cursor gets here.
            this.ahead.add(seq);
            (_a = this.gapTimer) !== null && _a !== void 0 ? _a : (this.gapTimer = setTimeout(() => this.passGap(), (_b = this.options.gapTimeoutMs) !== null && _b !== void 0 ? _b : DEFAULTS.gapTimeoutMs));
        }
    }
    /** Remembers a message id; whether it is new. */
    remember(msg) {
        var _a;
        if (this.seen.has(msg))
            return false;
        this.seen.add(msg);
        if (this.seen.size > ((_a = this.options.rememberMessages) !== null && _a !== void 0 ? _a : DEFAULTS.rememberMessages)) {
            this.seen.delete(this.seen.values().next().value);
        }
        return true;
    }
    /** The cursor of `user` moves to `seq`, and over what was processed past it. */
    advance(user, seq) {
        let cursor = seq;
        while (this.ahead.delete(cursor + 1))
            cursor += 1;
        this.seqs[user] = cursor;
        if (this.ahead.size === 0) {
            clearTimeout(this.gapTimer);
            this.gapTimer = undefined;
        }
    }
    /** The oldest missing seqs are still missing: report them and move past them. */
    passGap() {
        var _a, _b;
        this.gapTimer = undefined;
        const user = this.user;
        if (user === null || this.ahead.size === 0)
            return;
        const from = ((_a = this.seqs[user]) !== null && _a !== void 0 ? _a : 0) + 1;
        const next = Math.min(...this.ahead);
        for (let seq = from; seq < next && this.passed.size < 10000; seq++)
            this.passed.add(seq);
        this.ahead.delete(next);
        this.advance(user, next);
        if (this.ahead.size > 0) {
            this.gapTimer = setTimeout(() => this.passGap(), (_b = this.options.gapTimeoutMs) !== null && _b !== void 0 ? _b : DEFAULTS.gapTimeoutMs);
        }
        this.ackSeq = true;
        this.flushAcks();
        this.emit('gap', { user, from, to: next - 1 });
    }
    /** Acks within `ackDelayMs`, with whatever else comes meanwhile; `cumulative`: the cursor is to be acked. */
    scheduleAck(cumulative) {
        var _a, _b;
        if (cumulative)
            this.ackSeq = true;
        (_a = this.ackTimer) !== null && _a !== void 0 ? _a : (this.ackTimer = setTimeout(() => this.flushAcks(), (_b = this.options.ackDelayMs) !== null && _b !== void 0 ? _b : DEFAULTS.ackDelayMs));
    }
    /** Writes the acks due: one cumulative ack for the logged messages, one per live-only message. */
    flushAcks() {
        clearTimeout(this.ackTimer);
        this.ackTimer = undefined;
        if (this.current !== 'open' || this.user === null)
            return;
        const cursor = this.seqs[this.user];
        if (this.ackSeq && cursor !== undefined && cursor > 0)
            this.write({ type: 'ack', seq: cursor });
        for (const msg of this.ackMsgs)
            this.write({ type: 'ack', msg });
        this.ackSeq = false;
        this.ackMsgs = [];
        if (this.storage)
            store(this.storage, KEYS.seqs, JSON.stringify({ epoch: this.seqsEpoch, seqs: this.seqs }));
    }
    scheduleRefresh(exp) {
        var _a;
        clearTimeout(this.refreshTimer);
        this.refreshTimer = undefined;
        if (typeof this.options.token !== 'function')
            return;
        const left = exp * 1000 - Date.now();
        const margin = Math.min((_a = this.options.refreshMarginMs) !== null && _a !== void 0 ? _a : DEFAULTS.refreshMarginMs, left / 3);
        this.refreshTimer = setTimeout(() => void this.refresh(), Math.max(0, left - margin));
    }
    /** Asks the token callback for a fresh token and hands it to the server on this connection. */
    async refresh() {
        this.refreshTimer = undefined;
        const generation = this.generation;
        let token;
        try {
            token = await this.options.token();
        }
        catch (error) {
            if (generation === this.generation) {
                this.emit('error', new SwitchboardError('token_failed', `token callback failed: ${String(error)}`));
            }
            return;
        }
        if (generation !== this.generation || this.current !== 'open' || token === undefined)
            return;
        this.questions.push('refresh');
        this.write({ type: 'refresh', token });
    }
    appHidden() {
        this.hidden = true;
        this.stopHeartbeat();
    }
    appShown() {
        this.hidden = false;
        if (this.current === 'open') {
            // The socket may have died in the background without a word: ask now.
            this.stopHeartbeat();
            this.startHeartbeat();
            this.ping();
        }
        else {
            this.reconnectNow();
        }
    }
    /** Dials at once when waiting for the next attempt (back online, shown again). */
    reconnectNow() {
        if (this.current !== 'waiting' || this.hidden)
            return;
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = undefined;
        void this.dial();
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
        const frame = { type: 'send', id: send.id, to: send.to, body: send.body };
        if (send.ephemeral)
            frame.ephemeral = true;
        this.write(frame);
    }
    writePresence(query) {
        this.questions.push(query);
        this.write(query.frame);
    }
    write(frame) {
        if (this.socket && this.codec)
            this.socket.send(this.codec.encode(frame));
    }
    startHeartbeat() {
        var _a;
        const heartbeat = this.options.heartbeat;
        if (heartbeat === false || !this.welcomed)
            return;
        this.heartbeatTimer = setInterval(() => this.ping(), (_a = heartbeat === null || heartbeat === void 0 ? void 0 : heartbeat.intervalMs) !== null && _a !== void 0 ? _a : this.welcomed.heartbeat_ms);
    }
    ping() {
        var _a, _b;
        const heartbeat = this.options.heartbeat;
        if (heartbeat === false)
            return;
        const timeout = (_a = heartbeat === null || heartbeat === void 0 ? void 0 : heartbeat.timeoutMs) !== null && _a !== void 0 ? _a : DEFAULTS.heartbeatTimeoutMs;
        this.questions.push('ping');
        this.write({ type: 'ping' });
        (_b = this.silenceTimer) !== null && _b !== void 0 ? _b : (this.silenceTimer = setTimeout(() => this.drop(`no answer to ping within ${timeout}ms`), timeout));
    }
    stopHeartbeat() {
        clearInterval(this.heartbeatTimer);
        clearTimeout(this.silenceTimer);
        this.heartbeatTimer = this.silenceTimer = undefined;
    }
    /** Gives up on the current connection or attempt, and reconnects. */
    drop(reason) {
        var _a;
        (_a = this.socket) === null || _a === void 0 ? void 0 : _a.close(1000, 'dropped by the client');
        this.lost(CloseCode.Abnormal, reason);
    }
    /**
     * The current connection or attempt ended with `code`: reconnect after a
     * delay, or when the app is shown again; after 4003, never.
     */
    lost(code, reason) {
        if (code === CloseCode.Disconnected) {
            this.stop(new SwitchboardError('disconnected', `disconnected by the server: ${reason}`));
            this.emit('disconnected', { code, reason });
            return;
        }
        if (code === CloseCode.FrameTooLarge)
            this.rejectOversizedSend();
        this.endConnection();
        this.attempt += 1;
        this.urlIndex += 1;
        let delayMs = null;
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
    rejectOversizedSend() {
        var _a;
        let oversized;
        for (const send of this.sends.values()) {
            if (send.written > 0 && (oversized === undefined || send.written < oversized.written))
                oversized = send;
        }
        if (oversized === undefined)
            return;
        this.sends.delete(oversized.id);
        this.saveOutbox();
        (_a = oversized.reject) === null || _a === void 0 ? void 0 : _a.call(oversized, new SwitchboardError('frame_too_large', 'the node closed the connection on this send (1009)'));
    }
    /** Forgets the connection: its timers, its unanswered questions, what was written on it. */
    endConnection() {
        var _a;
        this.generation += 1;
        this.socket = null;
        this.welcomed = null;
        this.stopHeartbeat();
        for (const timer of [this.connectTimer, this.resendTimer, this.ackTimer, this.refreshTimer])
            clearTimeout(timer);
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
                (_a = send.reject) === null || _a === void 0 ? void 0 : _a.call(send, new SwitchboardError('connection_lost', 'the connection ended before the ephemeral send was answered'));
            }
        }
        this.questions = [];
    }
    reconnectDelay(code) {
        const { initialDelayMs, maxDelayMs, laterDelayMs } = this.reconnect;
        // The token expired: a fresh one is all it takes.
        if (code === CloseCode.TokenExpired)
            return 0;
        // The node is going away on purpose: go to the next one now, spread
        // over the first delay so that its clients do not all arrive at once.
        if (code === CloseCode.NodeRestarting)
            return Math.round(Math.random() * initialDelayMs);
        const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** (this.attempt - 1));
        return jitter(code === CloseCode.TryAgainLater ? Math.max(ceiling, laterDelayMs) : ceiling);
    }
    /** Stored sends of earlier clients on this storage: pending again, first, with their ids. */
    restoreOutbox() {
        const stored = readJson(this.storage, KEYS.outbox);
        if (!Array.isArray(stored))
            return;
        for (const entry of stored) {
            const recipients = entry === null || entry === void 0 ? void 0 : entry.to;
            const valid = typeof (entry === null || entry === void 0 ? void 0 : entry.id) === 'string' && (typeof recipients === 'string' || Array.isArray(recipients));
            if (!valid || this.sends.has(entry.id))
                continue;
            const { id, to, body = null } = entry;
            const user = typeof entry.user === 'string' ? entry.user : null;
            if (this.user !== null && user !== null && user !== this.user) {
                this.foreign.push({ user, id, to, body });
                continue;
            }
            this.sends.set(id, { id, to, body, user, ephemeral: false, written: 0, held: false });
        }
    }
    saveOutbox() {
        if (!this.storage)
            return;
        const entries = [...this.foreign];
        for (const { user, id, to, body, ephemeral } of this.sends.values()) {
            if (!ephemeral)
                entries.push({ user, id, to, body });
        }
        store(this.storage, KEYS.outbox, JSON.stringify(entries));
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
