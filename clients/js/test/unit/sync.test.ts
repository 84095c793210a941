// The client's paths of contract sections 8-10 over a fake transport, with
// mocked timers, clock and randomness: the device id and its storage, seqs,
// batched cumulative acks and gaps, `since`, sends to lists and ephemeral
// sends, typing, the outbox across a kill, the mini-program lifecycle, the
// in-band token refresh, closes 4001 and 4003, and the MessagePack codec.

import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';

import { type ClientOptions, type Disconnect, TYPING_BODY } from '../../src/client.js';
import type { Accepted, Message } from '../../src/protocol.js';
import type { AppLifecycle } from '../../src/transports.js';
import { FakeServer, MemoryStorage, fakeClient, settle } from '../support/fake-transport.js';

const EPOCH = '01900000-0000-7000-8000-0000000000e1';
const NOW = 1_700_000_000_000;

/** A client over a fake server, with timers and the clock mocked and `Math.random()` returning 1. */
function setup(t: TestContext, options: Partial<ClientOptions> = {}) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: NOW });
  t.mock.method(Math, 'random', () => 1);
  const server = new FakeServer();
  const client = fakeClient(t, server, options);
  const disconnects: Disconnect[] = [];
  client.on('disconnect', (event) => disconnects.push(event));
  return { server, client, disconnects, tick: (ms: number) => t.mock.timers.tick(ms) };
}


/** The logged message with `seq` for alice. */
function logged(seq: number, body: Message['body'] = `m${seq}`): Message {
  const msg = `01900000-0000-7000-8000-${String(seq).padStart(12, '0')}`;
  return { type: 'message', msg, from: 'bob', to: 'alice', body, ts: 1_732_700_000_000, seq };
}

function accepted(id: string, msg: string, status: Accepted['status'] = 'routed'): Accepted {
  return { type: 'accepted', id, msg, status };
}

/** A stand-in for `wx`'s app lifecycle: the test shows, hides and changes the network. */
function standInApp() {
  const callbacks = { show: [] as (() => void)[], hide: [] as (() => void)[], network: [] as ((r: { isConnected: boolean }) => void)[] };
  const app: AppLifecycle = {
    onAppShow: (callback) => callbacks.show.push(callback),
    onAppHide: (callback) => callbacks.hide.push(callback),
    onNetworkStatusChange: (callback) => callbacks.network.push(callback),
    offAppShow: (callback) => callbacks.show.splice(callbacks.show.indexOf(callback), 1),
    offAppHide: (callback) => callbacks.hide.splice(callbacks.hide.indexOf(callback), 1),
    offNetworkStatusChange: (callback) => callbacks.network.splice(callbacks.network.indexOf(callback), 1),
  };
  return {
    app,
    callbacks,
    show: () => callbacks.show.forEach((callback) => callback()),
    hide: () => callbacks.hide.forEach((callback) => callback()),
    network: (isConnected: boolean) => callbacks.network.forEach((callback) => callback({ isConnected })),
  };
}

test('the device id is made once, kept in storage and sent as ?device=; a given one wins; a bad one is refused', (t) => {
  const storage = new MemoryStorage();
  const { server, client } = setup(t, { device: undefined, storage });
  assert.match(client.device, /^d-[a-z0-9]{20}$/);
  assert.equal(storage.getItem('switchboard.device'), client.device);
  client.connect();
  assert.equal(server.last.request.url, `ws://n1/ws?user=alice&device=${client.device}`);
  const again = fakeClient(t, server, { device: undefined, storage });
  assert.equal(again.device, client.device, 'the next client (an app started again) is the same device');
  assert.deepEqual(storage.writes, ['switchboard.device'], 'written once');
  assert.equal(fakeClient(t, server, { device: 'laptop', storage }).device, 'laptop');
  assert.notEqual(fakeClient(t, server, { device: undefined, storage: null }).device, client.device);
  assert.throws(() => fakeClient(t, server, { device: 'no spaces' }), /device: invalid device id/);
});

test('one cumulative ack per burst: the replay and live messages after it, whatever their number', (t) => {
  const storage = new MemoryStorage();
  const { server, client, tick } = setup(t, { storage });
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  // A device seen for the first time: the replay starts at the oldest message still in the log.
  server.last.welcome({ seq: 12 });
  for (let seq = 10; seq <= 12; seq++) server.last.frame(logged(seq));
  server.last.frame(logged(13));
  assert.deepEqual(shown, [10, 11, 12, 13]);
  tick(99);
  assert.deepEqual(server.last.writtenOf('ack'), []);
  tick(1);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 13 }]);
  assert.equal(client.seq, 13);
  assert.deepEqual(storage.json('switchboard.seqs'), { epoch: EPOCH, seqs: { alice: 13 } });
  for (let seq = 14; seq <= 1013; seq++) server.last.frame(logged(seq));
  tick(100);
  assert.deepEqual(server.last.writtenOf('ack'), [
    { type: 'ack', seq: 13 },
    { type: 'ack', seq: 1013 },
  ]);
  assert.equal(shown.length, 1004);
  tick(10_000);
  assert.equal(server.last.writtenOf('ack').length, 2, 'nothing more without messages');
});

test('what comes again at or below the cursor is not shown, and is acked again on its connection', (t) => {
  const { server, client, disconnects, tick } = setup(t);
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  server.last.welcome({ seq: 0 });
  server.last.frame(logged(1));
  tick(100);
  server.last.frame(logged(2));
  server.last.frame(logged(3));
  // The connection ends before the burst's ack is written: the node replays 2 and 3.
  server.last.serverClose(1006);
  tick(disconnects[0]?.delayMs ?? 0);
  assert.deepEqual(server.connections[0]?.writtenOf('ack'), [{ type: 'ack', seq: 1 }]);
  server.last.welcome({ seq: 4 });
  server.last.frame(logged(2));
  server.last.frame(logged(3));
  server.last.frame(logged(4));
  tick(100);
  assert.deepEqual(shown, [1, 2, 3, 4]);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 4 }]);
});

test('a new client on the same storage drops what its predecessor acked, even where the ack did not reach the node', (t) => {
  const storage = new MemoryStorage();
  const { server, client, tick } = setup(t, { storage });
  client.connect();
  server.last.welcome({ seq: 2 });
  server.last.frame(logged(1));
  server.last.frame(logged(2));
  tick(100);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 2 }]);
  // The page is reloaded; the ack was lost on the way, so the node replays 1 and 2.
  const next = fakeClient(t, server, { storage });
  const shown: number[] = [];
  next.on('message', (message) => shown.push(message.seq ?? -1));
  next.connect();
  server.last.welcome({ seq: 3 });
  for (const seq of [1, 2, 3]) server.last.frame(logged(seq));
  tick(100);
  assert.deepEqual(shown, [3]);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 3 }]);
});

test('messages crossing on the way are not a gap: the cursor waits for the missing seq, then acks past both', (t) => {
  const { server, client, tick } = setup(t);
  const gaps: unknown[] = [];
  client.on('gap', (gap) => gaps.push(gap));
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  server.last.welcome({ seq: 5 });
  server.last.frame(logged(5));
  tick(100);
  server.last.frame(logged(7));
  tick(100);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 5 }], 'no ack past the missing 6');
  server.last.frame(logged(6));
  tick(100);
  assert.deepEqual(shown, [5, 7, 6]);
  assert.deepEqual(server.last.writtenOf('ack'), [
    { type: 'ack', seq: 5 },
    { type: 'ack', seq: 7 },
  ]);
  tick(10_000);
  assert.deepEqual(gaps, []);
  assert.equal(client.seq, 7);
});

test('a seq still missing after the gap timeout is reported, passed and acked past; if it comes late it is shown', (t) => {
  const { server, client, tick } = setup(t, { gapTimeoutMs: 2000 });
  const gaps: unknown[] = [];
  client.on('gap', (gap) => gaps.push(gap));
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  server.last.welcome({ seq: 3 });
  server.last.frame(logged(3));
  server.last.frame(logged(6));
  server.last.frame(logged(7));
  server.last.frame(logged(9));
  tick(1999);
  assert.deepEqual(gaps, []);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 3 }]);
  tick(1);
  assert.deepEqual(gaps, [{ user: 'alice', from: 4, to: 5 }]);
  assert.deepEqual(server.last.writtenOf('ack').at(-1), { type: 'ack', seq: 7 });
  tick(2000);
  assert.deepEqual(gaps, [
    { user: 'alice', from: 4, to: 5 },
    { user: 'alice', from: 8, to: 8 },
  ]);
  assert.deepEqual(server.last.writtenOf('ack').at(-1), { type: 'ack', seq: 9 });
  server.last.frame(logged(5));
  server.last.frame(logged(5));
  assert.deepEqual(shown, [3, 6, 7, 9, 5], 'late, and once');
  assert.equal(client.seq, 9);
});

test('since: the first connection and resync() ask for the log after a seq, and what comes again is shown again', async (t) => {
  const { server, client, tick } = setup(t, { since: 40 });
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  assert.equal(server.last.request.url, 'ws://n1/ws?user=alice&device=d1&since=40');
  server.last.welcome({ seq: 42 });
  server.last.frame(logged(41));
  server.last.frame(logged(42));
  tick(100);
  const welcome = client.resync(0);
  assert.deepEqual(server.connections[0]?.closedByClient, { code: 1000, reason: 'resync' });
  assert.equal(server.last.request.url, 'ws://n1/ws?user=alice&device=d1&since=0');
  server.last.welcome({ seq: 42, node: 'n2' });
  assert.equal((await welcome).node, 'n2');
  server.last.frame(logged(41));
  server.last.frame(logged(42));
  tick(100);
  assert.deepEqual(shown, [41, 42, 41, 42]);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 42 }]);
  // `since` is for one connection: the next one replays after the device's cursor.
  server.last.serverClose(1006);
  tick(1000);
  assert.equal(server.last.request.url, 'ws://n1/ws?user=alice&device=d1');
  await assert.rejects(client.resync(-1), { code: 'bad_frame' });
  assert.throws(() => fakeClient(t, server, { since: 1.5 }), /since: not a whole number/);
});

test('a new epoch starts the seqs again', (t) => {
  const { server, client, disconnects, tick } = setup(t);
  const shown: number[] = [];
  client.on('message', (message) => shown.push(message.seq ?? -1));
  client.connect();
  server.last.welcome({ seq: 50 });
  server.last.frame(logged(50));
  tick(100);
  server.last.serverClose(1006);
  tick(disconnects[0]?.delayMs ?? 0);
  server.last.welcome({ seq: 1, epoch: 'e-2' });
  server.last.frame({ ...logged(1), msg: '01900000-0000-7000-8000-00000000e201' });
  tick(100);
  assert.deepEqual(shown, [50, 1]);
  assert.deepEqual(server.last.writtenOf('ack'), [{ type: 'ack', seq: 1 }]);
});

test('a send to a list: one frame, per-recipient results, receipts naming the recipient', async (t) => {
  const { server, client } = setup(t);
  const receipts: unknown[] = [];
  client.on('receipt', (receipt) => receipts.push(receipt));
  client.connect();
  server.last.welcome();
  const sent = client.send(['bob', 'carol'], { text: 'hi all' }, { id: 'g-1' });
  assert.deepEqual(server.last.writtenOf('send'), [{ type: 'send', id: 'g-1', to: ['bob', 'carol'], body: { text: 'hi all' } }]);
  const answer = { ...accepted('g-1', 'm-1'), recipients: { bob: 'routed', carol: 'stored' } } as const;
  server.last.frame(answer);
  assert.deepEqual(await sent, answer);
  server.last.frame({ type: 'receipt', id: 'g-1', msg: 'm-1', status: 'delivered', user: 'carol' });
  assert.deepEqual(receipts, [{ type: 'receipt', id: 'g-1', msg: 'm-1', status: 'delivered', user: 'carol' }]);
});

test('an ephemeral send: written only when open, never resent, never stored; refused at once when offline', async (t) => {
  const storage = new MemoryStorage();
  const { server, client, disconnects, tick } = setup(t, { storage });
  await assert.rejects(client.send('bob', 'x', { ephemeral: true }), { code: 'not_connected' });
  client.connect();
  server.last.welcome();
  const answered = client.send('bob', 'cursor 1', { id: 'e-1', ephemeral: true });
  const unanswered = client.send('bob', 'cursor 2', { id: 'e-2', ephemeral: true });
  const limited = client.send('bob', 'cursor 3', { id: 'e-3', ephemeral: true });
  assert.deepEqual(server.last.writtenOf('send'), [
    { type: 'send', id: 'e-1', to: 'bob', body: 'cursor 1', ephemeral: true },
    { type: 'send', id: 'e-2', to: 'bob', body: 'cursor 2', ephemeral: true },
    { type: 'send', id: 'e-3', to: 'bob', body: 'cursor 3', ephemeral: true },
  ]);
  assert.deepEqual(storage.json('switchboard.outbox') ?? [], [], 'ephemeral sends are not stored');
  server.last.frame(accepted('e-1', 'm-1', 'offline'));
  assert.equal((await answered).status, 'offline');
  server.last.frame({ type: 'error', id: 'e-3', code: 'rate_limited', message: 'over the rate limit: slow down' });
  await assert.rejects(limited, { code: 'rate_limited' });
  server.last.serverClose(1006);
  await assert.rejects(unanswered, { code: 'connection_lost' });
  tick(disconnects[0]?.delayMs ?? 0);
  server.last.welcome();
  assert.deepEqual(server.last.written, []);
});

test('typing(): an ephemeral send, throttled per recipients; a typing message is reported as typing, not shown, not acked', (t) => {
  const { server, client, tick } = setup(t, { typingIntervalMs: 2000 });
  const typing: unknown[] = [];
  const shown: unknown[] = [];
  client.on('typing', (event) => typing.push(event));
  client.on('message', (message) => shown.push(message));
  assert.equal(client.typing('bob'), false, 'not connected');
  client.connect();
  server.last.welcome();
  assert.equal(client.typing('bob'), true);
  tick(500);
  assert.equal(client.typing('bob'), false);
  assert.equal(client.typing(['carol', 'bob']), true);
  assert.equal(client.typing(['bob', 'carol']), false, 'the same recipients in another order');
  tick(1500);
  assert.equal(client.typing('bob'), true);
  const sends = server.last.writtenOf('send');
  assert.deepEqual(
    sends.map((frame) => [frame.to, frame.body, frame.ephemeral]),
    [
      ['bob', TYPING_BODY, true],
      [['carol', 'bob'], TYPING_BODY, true],
      ['bob', TYPING_BODY, true],
    ],
  );
  server.last.frame({ type: 'message', msg: 'm-t', from: 'bob', to: 'alice', body: { switchboard: 'typing' }, ts: 1 });
  tick(100);
  assert.deepEqual(typing, [{ from: 'bob', to: 'alice' }]);
  assert.deepEqual(shown, []);
  assert.deepEqual(server.last.writtenOf('ack'), []);
});

test('the outbox survives a kill: the next client on the storage resends what was unanswered, with the same ids, first', async (t) => {
  const storage = new MemoryStorage();
  const { server, client } = setup(t, { storage });
  client.connect();
  server.last.welcome();
  void client.send('bob', 'one', { id: 'c-1' });
  void client.send(['bob', 'carol'], 'two', { id: 'c-2' });
  void client.send('carol', 'three', { id: 'c-3' });
  server.last.frame(accepted('c-1', 'm-1'));
  assert.deepEqual(storage.json('switchboard.outbox'), [
    { user: 'alice', id: 'c-2', to: ['bob', 'carol'], body: 'two' },
    { user: 'alice', id: 'c-3', to: 'carol', body: 'three' },
  ]);
  // Killed: no close(), nothing more from this client.
  const next = fakeClient(t, server, { storage });
  const answers: Accepted[] = [];
  next.on('accepted', (answer) => answers.push(answer));
  const fresh = next.send('dave', 'four', { id: 'c-4' });
  next.connect();
  server.last.welcome();
  assert.deepEqual(server.last.writtenOf('send'), [
    { type: 'send', id: 'c-2', to: ['bob', 'carol'], body: 'two' },
    { type: 'send', id: 'c-3', to: 'carol', body: 'three' },
    { type: 'send', id: 'c-4', to: 'dave', body: 'four' },
  ]);
  server.last.frame(accepted('c-2', 'm-2'));
  server.last.frame(accepted('c-3', 'm-3', 'stored'));
  server.last.frame(accepted('c-4', 'm-4'));
  assert.equal((await fresh).msg, 'm-4');
  assert.deepEqual(
    answers.map((answer) => answer.id),
    ['c-2', 'c-3', 'c-4'],
  );
  assert.deepEqual(storage.json('switchboard.outbox'), []);
});

test("the outbox keeps another user's sends as they are; close() forgets the sends it rejects", async (t) => {
  const storage = new MemoryStorage();
  storage.setItem('switchboard.outbox', JSON.stringify([{ user: 'zoe', id: 'z-1', to: 'bob', body: 'from zoe' }]));
  const { server, client } = setup(t, { storage, user: undefined, token: 'jwt' });
  const pending = client.send('bob', 'mine', { id: 'a-1' });
  client.connect();
  await settle();
  server.last.welcome({ user: 'alice' });
  assert.deepEqual(server.last.writtenOf('send'), [{ type: 'send', id: 'a-1', to: 'bob', body: 'mine' }]);
  assert.deepEqual(storage.json('switchboard.outbox'), [
    { user: 'zoe', id: 'z-1', to: 'bob', body: 'from zoe' },
    { user: 'alice', id: 'a-1', to: 'bob', body: 'mine' },
  ]);
  client.close();
  await assert.rejects(pending, { code: 'client_closed' });
  assert.deepEqual(storage.json('switchboard.outbox'), [{ user: 'zoe', id: 'z-1', to: 'bob', body: 'from zoe' }]);
});

test('mini-program: hidden, no heartbeat; a connection lost in the background waits for onAppShow, then reconnects at once', (t) => {
  const app = standInApp();
  const { server, client, disconnects, tick } = setup(t, { app: app.app, heartbeat: { timeoutMs: 3000 } });
  client.connect();
  server.last.welcome({ heartbeat_ms: 5000 });
  tick(5000);
  assert.equal(server.last.writtenOf('ping').length, 1);
  server.last.frame({ type: 'pong' });
  app.hide();
  tick(60_000);
  assert.equal(server.last.writtenOf('ping').length, 1, 'no ping in the background');
  assert.equal(disconnects.length, 0, 'and no drop for a missing pong');
  // WeChat interrupts the socket 5 s into the background.
  server.last.serverClose(1006, 'interrupted');
  assert.deepEqual(disconnects, [{ code: 1006, reason: 'interrupted', delayMs: null }]);
  app.network(true);
  tick(600_000);
  assert.equal(server.connections.length, 1, 'no attempt while hidden');
  app.show();
  assert.equal(server.connections.length, 2, 'at once when shown');
  server.last.welcome({ heartbeat_ms: 5000 });
  tick(5000);
  assert.equal(server.last.writtenOf('ping').length, 1, 'heartbeats again');
  client.close();
  assert.deepEqual(app.callbacks, { show: [], hide: [], network: [] }, 'close() removes its listeners');
});

test('mini-program: back online or shown while waiting, the next attempt starts at once; shown while open, a ping checks the socket', (t) => {
  const app = standInApp();
  const { server, client, disconnects } = setup(t, { app: app.app, reconnect: { initialDelayMs: 10_000 } });
  client.connect();
  server.last.serverClose(1006);
  assert.equal(disconnects[0]?.delayMs, 10_000);
  app.network(false);
  assert.equal(server.connections.length, 1);
  app.network(true);
  assert.equal(server.connections.length, 2);
  server.last.serverClose(1006);
  app.show();
  assert.equal(server.connections.length, 3);
  server.last.welcome();
  app.hide();
  app.show();
  assert.deepEqual(server.last.writtenOf('ping'), [{ type: 'ping' }]);
  assert.equal(server.connections.length, 3);
});

test('mini-program: the client never holds two sockets (5 per app), whatever the lifecycle and resyncs do', async (t) => {
  const app = standInApp();
  const { server, client, tick } = setup(t, { app: app.app, connectTimeoutMs: 5000 });
  const open = () => server.connections.filter((connection) => connection.open).length;
  const counts: number[] = [];
  client.connect();
  counts.push(open());
  app.show();
  app.network(true);
  counts.push(open());
  server.last.welcome();
  app.show();
  app.network(true);
  counts.push(open());
  void client.resync(3);
  counts.push(open());
  app.hide();
  tick(5000);
  counts.push(open());
  app.show();
  counts.push(open());
  server.last.serverClose(1006);
  app.network(true);
  app.show();
  counts.push(open());
  assert.deepEqual(counts, [1, 1, 1, 1, 0, 1, 1]);
  assert.equal(server.connections.length, 4);
});

test('refresh: the token callback is asked before exp and the new token sent in-band; refreshed moves the next refresh', async (t) => {
  let calls = 0;
  const { server, client, tick } = setup(t, { user: undefined, token: () => `token-${++calls}`, refreshMarginMs: 60_000 });
  const refreshed: unknown[] = [];
  client.on('refreshed', (event) => refreshed.push(event));
  client.connect();
  await settle();
  assert.equal(server.last.request.token, 'token-1');
  // 90 s left: refreshed a third of that before exp (the margin is at most a third).
  server.last.welcome({ exp: NOW / 1000 + 90 });
  tick(59_999);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), []);
  tick(1);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), [{ type: 'refresh', token: 'token-2' }]);
  server.last.frame({ type: 'refreshed', exp: NOW / 1000 + 3600 });
  assert.deepEqual(refreshed, [{ exp: NOW / 1000 + 3600 }]);
  // 3540 s left: refreshed 60 s before exp.
  tick(3_540_000 - 60_000 - 1);
  await settle();
  assert.equal(server.last.writtenOf('refresh').length, 1);
  tick(1);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh').at(-1), { type: 'refresh', token: 'token-3' });
  assert.equal(server.connections.length, 1);
});

test('refresh: a short token is refreshed at two thirds of its life; a static token is never refreshed', async (t) => {
  let calls = 0;
  const { server, client, tick } = setup(t, { user: undefined, token: () => `token-${++calls}` });
  client.connect();
  await settle();
  server.last.welcome({ exp: NOW / 1000 + 3 });
  tick(1999);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), []);
  tick(1);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), [{ type: 'refresh', token: 'token-2' }]);
  const fixed = fakeClient(t, server, { user: undefined, token: 'static' });
  fixed.connect();
  server.last.welcome({ exp: NOW / 1000 + 3 });
  tick(10_000);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), []);
});

test('bad_token is reported; close 4001 reconnects at once with a fresh token, and what was pending goes out again', async (t) => {
  let calls = 0;
  const { server, client, disconnects } = setup(t, { user: undefined, token: () => `token-${++calls}` });
  const errors: string[] = [];
  client.on('error', (error) => errors.push(error.code));
  client.connect();
  await settle();
  server.last.welcome({ exp: NOW / 1000 + 30 });
  const sent = client.send('bob', 'one', { id: 'c-1' });
  t.mock.timers.tick(20_000);
  await settle();
  assert.deepEqual(server.last.writtenOf('refresh'), [{ type: 'refresh', token: 'token-2' }]);
  server.last.frame({ type: 'error', code: 'bad_token', message: 'token for another user' });
  assert.deepEqual(errors, ['bad_token']);
  server.last.serverClose(4001, 'token expired');
  assert.deepEqual(disconnects, [{ code: 4001, reason: 'token expired', delayMs: 0 }]);
  t.mock.timers.tick(0);
  await settle();
  assert.equal(server.connections.length, 2);
  assert.equal(server.last.request.token, 'token-3');
  server.last.welcome({ exp: NOW / 1000 + 3600 });
  assert.deepEqual(server.last.writtenOf('send'), [{ type: 'send', id: 'c-1', to: 'bob', body: 'one' }]);
  server.last.frame(accepted('c-1', 'm-1'));
  assert.equal((await sent).msg, 'm-1');
});

test('close 4003 stops the client: disconnected with the reason, pending sends rejected, no reconnect', async (t) => {
  const storage = new MemoryStorage();
  const { server, client, disconnects } = setup(t, { storage });
  const states: string[] = [];
  const stopped: unknown[] = [];
  client.on('state', (state) => states.push(state));
  client.on('disconnected', (event) => stopped.push(event));
  client.connect();
  server.last.welcome();
  const sent = client.send('bob', 'one', { id: 'c-1' });
  server.last.serverClose(4003, 'disconnected');
  await assert.rejects(sent, { code: 'disconnected' });
  assert.deepEqual(stopped, [{ code: 4003, reason: 'disconnected' }]);
  assert.equal(client.state, 'closed');
  assert.deepEqual(states, ['connecting', 'open', 'closed']);
  assert.deepEqual(disconnects, []);
  assert.deepEqual(storage.json('switchboard.outbox'), []);
  t.mock.timers.tick(600_000);
  assert.equal(server.connections.length, 1);
  await assert.rejects(client.connect(), { code: 'client_closed' });
});

test("codec 'msgpack': loaded when the client dials, offered as the subprotocol, binary frames both ways", async (t) => {
  const { server, client, tick } = setup(t, { codec: 'msgpack' });
  const shown: Message[] = [];
  client.on('message', (message) => shown.push(message));
  const connection = server.nextConnection();
  const welcome = client.connect();
  assert.equal(server.connections.length, 0, 'the codec is imported first');
  await connection;
  assert.equal(server.last.request.protocol, 'switchboard.v1.msgpack');
  server.last.binaryFrame({
    type: 'welcome',
    user: 'alice',
    conn: 'c',
    node: 'n1',
    heartbeat_ms: 25_000,
    epoch: EPOCH,
    device: 'd1',
    seq: 1,
  });
  assert.equal((await welcome).seq, 1);
  const sent = client.send('bob', { n: [1, 2.5, 'x'] }, { id: 'c-1' });
  server.last.binaryFrame(accepted('c-1', 'm-1'));
  assert.equal((await sent).msg, 'm-1');
  server.last.binaryFrame(logged(1, { big: 1_732_700_000_000 }));
  tick(100);
  assert.equal(server.last.binary, true);
  assert.deepEqual(server.last.written, [
    { type: 'send', id: 'c-1', to: 'bob', body: { n: [1, 2.5, 'x'] } },
    { type: 'ack', seq: 1 },
  ]);
  assert.deepEqual(shown[0]?.body, { big: 1_732_700_000_000 });
});

test('storage is best effort: one that throws costs nothing but what it would keep; what it holds that is not ours is ignored', async (t) => {
  const broken = {
    getItem: (): string => {
      throw new Error('SecurityError');
    },
    setItem: () => {
      throw new Error('QuotaExceededError');
    },
  };
  const { server, client } = setup(t, { storage: broken, device: undefined });
  assert.match(client.device, /^d-[a-z0-9]{20}$/);
  client.connect();
  server.last.welcome();
  const sent = client.send('bob', 'one', { id: 'c-1' });
  assert.deepEqual(server.last.writtenOf('send'), [{ type: 'send', id: 'c-1', to: 'bob', body: 'one' }]);
  server.last.frame(accepted('c-1', 'm-1'));
  assert.equal((await sent).msg, 'm-1');

  const garbage = new MemoryStorage();
  garbage.setItem('switchboard.outbox', JSON.stringify([null, { id: 7 }, { id: 'c-2', to: 'bob', body: 'ok', user: 'alice' }, 'x']));
  garbage.setItem('switchboard.seqs', '{"epoch":"e","seqs":null}');
  garbage.setItem('switchboard.device', 'not a device id!');
  const next = fakeClient(t, server, { storage: garbage, device: undefined });
  assert.match(next.device, /^d-[a-z0-9]{20}$/);
  next.connect();
  server.last.welcome();
  assert.deepEqual(server.last.writtenOf('send'), [{ type: 'send', id: 'c-2', to: 'bob', body: 'ok' }]);
});
