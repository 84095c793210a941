// The client against a fake transport, with mocked timers and randomness:
// each test plays the server frame by frame and checks exactly what the
// client wrote, when it reconnected, and what it reported.

import assert from 'node:assert/strict';
import { type TestContext, test } from 'node:test';

import type { ClientOptions, Disconnect } from '../../src/client.js';
import type { Accepted, Message } from '../../src/protocol.js';
import { FakeServer, fakeClient, settle } from '../support/fake-transport.js';

const MSG_1 = '01900000-0000-7000-8000-000000000101';
const MSG_2 = '01900000-0000-7000-8000-000000000102';
const MSG_3 = '01900000-0000-7000-8000-000000000103';

/** A client over a fake server, with timers mocked and `Math.random()` returning `random`. */
function setup(t: TestContext, options: Partial<ClientOptions> = {}, random = 1) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
  t.mock.method(Math, 'random', () => random);
  const server = new FakeServer();
  const client = fakeClient(t, server, options);
  const disconnects: Disconnect[] = [];
  client.on('disconnect', (event) => disconnects.push(event));
  return { server, client, disconnects, tick: (ms: number) => t.mock.timers.tick(ms) };
}

function accepted(id: string, msg: string, status: Accepted['status'] = 'routed'): Accepted {
  return { type: 'accepted', id, msg, status };
}

function message(msg: string, body: Message['body'] = 'hi'): Message {
  return { type: 'message', msg, from: 'bob', to: 'alice', body, ts: 1_732_700_000_000 };
}

test('connects with ?user=, ?device= and the JSON subprotocol; connect() resolves with the welcome', async (t) => {
  const { server, client } = setup(t);
  const states: string[] = [];
  client.on('state', (state) => states.push(state));
  const welcome = client.connect();
  assert.equal(server.connections.length, 1);
  assert.deepEqual(server.last.request, { url: 'ws://n1/ws?user=alice&device=d1', token: undefined, protocol: 'switchboard.v1.json' });
  server.last.welcome({ node: 'n7' });
  assert.equal((await welcome).node, 'n7');
  assert.deepEqual(states, ['connecting', 'open']);
  assert.equal(client.state, 'open');
  assert.equal((await client.connect()).node, 'n7', 'connect() when open answers at once');
});

test('sends made before the welcome go out on it, in order; each resolves with its accepted', async (t) => {
  const { server, client } = setup(t);
  const first = client.send('bob', { text: 'one' }, { id: 'c-1' });
  const second = client.send('bob', 'two', { id: 'c-2' });
  client.connect();
  assert.deepEqual(server.last.written, [], 'nothing is written before the welcome');
  server.last.welcome();
  const third = client.send('carol', null, { id: 'c-3' });
  assert.deepEqual(server.last.written, [
    { type: 'send', id: 'c-1', to: 'bob', body: { text: 'one' } },
    { type: 'send', id: 'c-2', to: 'bob', body: 'two' },
    { type: 'send', id: 'c-3', to: 'carol', body: null },
  ]);
  server.last.frame(accepted('c-2', MSG_2, 'stored'));
  server.last.frame(accepted('c-1', MSG_1));
  server.last.frame(accepted('c-3', MSG_3));
  assert.deepEqual(await first, accepted('c-1', MSG_1));
  assert.deepEqual(await second, accepted('c-2', MSG_2, 'stored'));
  assert.deepEqual(await third, accepted('c-3', MSG_3));
});

test('generated send ids are distinct and 1 to 64 bytes; a bad or pending id is refused', async (t) => {
  const { server, client } = setup(t);
  client.connect();
  server.last.welcome();
  void client.send('bob', 1);
  void client.send('bob', 2);
  const ids = server.last.writtenOf('send').map((frame) => frame.id);
  assert.equal(new Set(ids).size, 2);
  for (const id of ids) assert.ok(id.length >= 1 && id.length <= 64, id);
  await assert.rejects(client.send('bob', 3, { id: '' }), { code: 'bad_frame' });
  await assert.rejects(client.send('bob', 3, { id: 'é'.repeat(33) }), { code: 'bad_frame' });
  void client.send('bob', 3, { id: 'c-9' });
  await assert.rejects(client.send('bob', 4, { id: 'c-9' }), { code: 'duplicate_id' });
  assert.equal(server.last.writtenOf('send').length, 3);
});

test('unanswered sends are written again on the next connection with the same ids, in order', async (t) => {
  const { server, client } = setup(t);
  client.connect();
  server.last.welcome();
  const first = client.send('bob', 'one', { id: 'c-1' });
  const second = client.send('bob', 'two', { id: 'c-2' });
  const third = client.send('carol', 'three', { id: 'c-3' });
  server.last.frame(accepted('c-1', MSG_1));
  server.last.serverClose(1006);
  t.mock.timers.tick(1000);
  assert.equal(server.connections.length, 2);
  assert.deepEqual(server.last.written, [], 'held until the welcome');
  server.last.welcome();
  assert.deepEqual(server.last.writtenOf('send'), [
    { type: 'send', id: 'c-2', to: 'bob', body: 'two' },
    { type: 'send', id: 'c-3', to: 'carol', body: 'three' },
  ]);
  // The server dedupes: a repeated id gets the original answer.
  server.last.frame(accepted('c-2', MSG_2));
  server.last.frame(accepted('c-2', MSG_2));
  server.last.frame(accepted('c-1', MSG_1));
  server.last.frame(accepted('c-3', MSG_3, 'stored'));
  assert.equal((await first).msg, MSG_1);
  assert.equal((await second).msg, MSG_2);
  assert.equal((await third).status, 'stored');
});

test('reconnect delays back off exponentially up to the cap, jittered, and reset at a welcome', (t) => {
  const { server, client, disconnects, tick } = setup(t, { reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } });
  client.connect();
  for (let attempt = 0; attempt < 6; attempt++) {
    server.last.serverClose(1006);
    tick(disconnects.at(-1)?.delayMs ?? 0);
  }
  assert.deepEqual(
    disconnects.map((event) => event.delayMs),
    [100, 200, 400, 800, 1000, 1000],
  );
  assert.equal(server.connections.length, 7);
  server.last.welcome();
  server.last.serverClose(1000, 'idle timeout');
  assert.deepEqual(disconnects.at(-1), { code: 1000, reason: 'idle timeout', delayMs: 100 });
});

test('the jitter keeps each delay between half its ceiling and its ceiling', (t) => {
  const { server, client, disconnects, tick } = setup(t, { reconnect: { initialDelayMs: 100, maxDelayMs: 1000 } }, 0);
  client.connect();
  for (let attempt = 0; attempt < 3; attempt++) {
    server.last.serverClose(1006);
    tick(disconnects.at(-1)?.delayMs ?? 0);
  }
  assert.deepEqual(
    disconnects.map((event) => event.delayMs),
    [50, 100, 200],
  );
});

test('1012 goes to the next URL within the first delay; other closes rotate too', (t) => {
  const { server, client, disconnects, tick } = setup(t, { url: ['ws://n1/ws', 'ws://n2/ws'] }, 0.5);
  client.connect();
  server.last.welcome();
  server.last.serverClose(1012, 'node restarting');
  assert.deepEqual(disconnects, [{ code: 1012, reason: 'node restarting', delayMs: 250 }]);
  tick(249);
  assert.equal(server.connections.length, 1);
  tick(1);
  assert.equal(server.last.request.url, 'ws://n2/ws?user=alice&device=d1');
  server.last.serverClose(1006);
  tick(disconnects.at(-1)?.delayMs ?? 0);
  assert.equal(server.last.request.url, 'ws://n1/ws?user=alice&device=d1');
});

test('1013 waits at least the later delay', (t) => {
  const { server, client, disconnects, tick } = setup(t, { reconnect: { initialDelayMs: 100, laterDelayMs: 4000 } });
  client.connect();
  server.last.welcome();
  server.last.serverClose(1013, 'slow consumer');
  assert.equal(disconnects[0]?.delayMs, 4000);
  tick(3999);
  assert.equal(server.connections.length, 1);
  tick(1);
  assert.equal(server.connections.length, 2);
});

test('the token callback runs before every attempt; a failing one is reported and retried', async (t) => {
  let calls = 0;
  const { server, client, disconnects, tick } = setup(t, {
    user: undefined,
    token: async () => {
      calls += 1;
      if (calls === 1) throw new Error('auth server down');
      return `token-${calls}`;
    },
  });
  const errors: string[] = [];
  client.on('error', (error) => errors.push(`${error.code}: ${error.message}`));
  client.connect();
  await settle();
  assert.deepEqual(errors, ['token_failed: token callback failed: Error: auth server down']);
  assert.equal(server.connections.length, 0);
  assert.equal(disconnects[0]?.code, 1006);
  tick(disconnects[0]?.delayMs ?? 0);
  await settle();
  assert.deepEqual(server.last.request, { url: 'ws://n1/ws?device=d1', token: 'token-2', protocol: 'switchboard.v1.json' });
  server.last.serverClose(1006);
  tick(disconnects.at(-1)?.delayMs ?? 0);
  await settle();
  assert.equal(server.last.request.token, 'token-3');
});

test('a retryable refusal holds the send, and later sends behind it, then writes them again in order', async (t) => {
  const { server, client, tick } = setup(t, { reconnect: { initialDelayMs: 200 } });
  client.connect();
  server.last.welcome();
  const first = client.send('bob', 'one', { id: 'c-1' });
  server.last.frame({ type: 'error', id: 'c-1', code: 'rate_limited', message: 'over the rate limit: slow down' });
  const second = client.send('bob', 'two', { id: 'c-2' });
  assert.deepEqual(
    server.last.writtenOf('send').map((frame) => frame.id),
    ['c-1'],
  );
  tick(200);
  assert.deepEqual(
    server.last.writtenOf('send').map((frame) => frame.id),
    ['c-1', 'c-1', 'c-2'],
  );
  // Refused again before any accepted: the next round waits twice as long.
  server.last.frame({ type: 'error', id: 'c-1', code: 'internal', message: 'backend failed' });
  server.last.frame(accepted('c-2', MSG_2));
  tick(399);
  assert.equal(server.last.writtenOf('send').length, 3);
  tick(1);
  assert.deepEqual(
    server.last.writtenOf('send').map((frame) => frame.id),
    ['c-1', 'c-1', 'c-2', 'c-1'],
  );
  server.last.frame(accepted('c-1', MSG_1));
  assert.equal((await first).msg, MSG_1);
  assert.equal((await second).msg, MSG_2);
});

test('a final refusal rejects the send with the server code', async (t) => {
  const { server, client } = setup(t);
  client.connect();
  server.last.welcome();
  const send = client.send('not a user!', 'x', { id: 'c-1' });
  server.last.frame({ type: 'error', id: 'c-1', code: 'invalid_recipient', message: 'invalid user id' });
  await assert.rejects(send, { name: 'SwitchboardError', code: 'invalid_recipient', message: 'invalid user id' });
});

test('close 1009 rejects the send that caused it; the others are written again', async (t) => {
  const { server, client, disconnects, tick } = setup(t);
  client.connect();
  server.last.welcome();
  const small = client.send('bob', 'small', { id: 'c-1' });
  const large = client.send('bob', 'x'.repeat(70_000), { id: 'c-2' });
  const after = client.send('bob', 'after', { id: 'c-3' });
  server.last.frame(accepted('c-1', MSG_1));
  server.last.serverClose(1009, 'frame too large');
  await assert.rejects(large, { code: 'frame_too_large' });
  tick(disconnects[0]?.delayMs ?? 0);
  server.last.welcome();
  assert.deepEqual(
    server.last.writtenOf('send').map((frame) => frame.id),
    ['c-3'],
  );
  server.last.frame(accepted('c-3', MSG_3));
  assert.equal((await small).msg, MSG_1);
  assert.equal((await after).msg, MSG_3);
});

test('a live-only message (no seq) is shown once and acked by its msg after the listeners; a repeat is acked again', (t) => {
  const { server, client, disconnects, tick } = setup(t);
  const shown: string[] = [];
  const acksWhenShown: number[] = [];
  client.on('message', (received) => {
    shown.push(`${received.msg}:${String(received.body)}`);
    acksWhenShown.push(server.last.writtenOf('ack').length);
  });
  client.connect();
  server.last.welcome();
  server.last.frame(message(MSG_1, 'one'));
  server.last.frame(message(MSG_1, 'one'));
  server.last.frame(message(MSG_2, 'two'));
  assert.deepEqual(shown, [`${MSG_1}:one`, `${MSG_2}:two`]);
  assert.deepEqual(acksWhenShown, [0, 0], 'acked after the listeners saw it');
  tick(99);
  assert.deepEqual(server.last.writtenOf('ack'), [], 'acks wait for the burst to end');
  tick(1);
  assert.deepEqual(server.last.writtenOf('ack'), [
    { type: 'ack', msg: MSG_1 },
    { type: 'ack', msg: MSG_1 },
    { type: 'ack', msg: MSG_2 },
  ]);
  // The ack of MSG_2 did not reach the node: it comes again on the next connection.
  server.last.serverClose(1006);
  tick(disconnects[0]?.delayMs ?? 0);
  server.last.welcome();
  server.last.frame(message(MSG_2, 'two'));
  server.last.frame(message(MSG_3, 'three'));
  tick(100);
  assert.deepEqual(shown, [`${MSG_1}:one`, `${MSG_2}:two`, `${MSG_3}:three`]);
  assert.deepEqual(server.last.writtenOf('ack'), [
    { type: 'ack', msg: MSG_2 },
    { type: 'ack', msg: MSG_3 },
  ]);
});

test('the remembered message ids are bounded: the oldest is forgotten first', (t) => {
  const { server, client } = setup(t, { rememberMessages: 2 });
  let shown = 0;
  client.on('message', () => shown++);
  client.connect();
  server.last.welcome();
  for (const msg of [MSG_1, MSG_2, MSG_3, MSG_3, MSG_2, MSG_1]) server.last.frame(message(msg));
  assert.equal(shown, 4, 'MSG_1 was forgotten when MSG_3 came');
});

test('receipts are reported', (t) => {
  const { server, client } = setup(t);
  const receipts: unknown[] = [];
  client.on('receipt', (receipt) => receipts.push(receipt));
  client.connect();
  server.last.welcome();
  server.last.frame({ type: 'receipt', id: 'c-1', msg: MSG_1, status: 'delivered' });
  assert.deepEqual(receipts, [{ type: 'receipt', id: 'c-1', msg: MSG_1, status: 'delivered' }]);
});

test('heartbeat: a ping every interval; silence after a ping drops the connection', (t) => {
  const { server, client, disconnects } = setup(t, { heartbeat: { timeoutMs: 3000 } });
  client.connect();
  server.last.welcome({ heartbeat_ms: 5000 });
  t.mock.timers.tick(4999);
  assert.deepEqual(server.last.writtenOf('ping'), []);
  t.mock.timers.tick(1);
  assert.deepEqual(server.last.writtenOf('ping'), [{ type: 'ping' }]);
  t.mock.timers.tick(2000);
  server.last.frame({ type: 'pong' });
  t.mock.timers.tick(3000);
  assert.equal(server.last.writtenOf('ping').length, 2);
  t.mock.timers.tick(2999);
  assert.equal(disconnects.length, 0);
  t.mock.timers.tick(1);
  assert.deepEqual(server.last.closedByClient, { code: 1000, reason: 'dropped by the client' });
  assert.deepEqual(disconnects, [{ code: 1006, reason: 'no answer to ping within 3000ms', delayMs: 500 }]);
  assert.equal(client.state, 'waiting');
});

test('heartbeat: false sends no ping', (t) => {
  const { server, client } = setup(t, { heartbeat: false });
  client.connect();
  server.last.welcome({ heartbeat_ms: 1000 });
  t.mock.timers.tick(10_000);
  assert.deepEqual(server.last.written, []);
});

test('an attempt without a welcome is abandoned after the connect timeout', (t) => {
  const { server, client, disconnects } = setup(t, { connectTimeoutMs: 2000 });
  client.connect();
  t.mock.timers.tick(1999);
  assert.equal(disconnects.length, 0);
  t.mock.timers.tick(1);
  assert.ok(server.last.closedByClient);
  assert.deepEqual(disconnects, [{ code: 1006, reason: 'no welcome within 2000ms', delayMs: 500 }]);
  t.mock.timers.tick(500);
  assert.equal(server.connections.length, 2);
});

test('a report from a connection already given up is ignored', (t) => {
  const { server, client, disconnects } = setup(t, { connectTimeoutMs: 2000 });
  client.connect();
  const abandoned = server.last;
  t.mock.timers.tick(2000);
  abandoned.welcome();
  abandoned.serverClose(1012);
  assert.equal(client.state, 'waiting');
  assert.equal(disconnects.length, 1);
});

test('presence: asked once connected, answered by the users it names, asked again after a reconnect', async (t) => {
  const { server, client, disconnects, tick } = setup(t);
  const first = client.presence(['carol', 'bob', 'carol']);
  const second = client.presence(['dave']);
  client.connect();
  server.last.welcome();
  assert.deepEqual(server.last.writtenOf('presence'), [
    { type: 'presence', users: ['bob', 'carol'] },
    { type: 'presence', users: ['dave'] },
  ]);
  server.last.frame({ type: 'presence', online: { bob: true, carol: false } });
  assert.deepEqual(await first, { bob: true, carol: false });
  server.last.serverClose(1006);
  tick(disconnects[0]?.delayMs ?? 0);
  server.last.welcome();
  assert.deepEqual(server.last.writtenOf('presence'), [{ type: 'presence', users: ['dave'] }]);
  server.last.frame({ type: 'presence', online: { dave: true } });
  assert.deepEqual(await second, { dave: true });
  assert.deepEqual(await client.presence([]), {});
});

test('presence: a query the server would refuse is refused before it is written', async (t) => {
  const { server, client } = setup(t);
  client.connect();
  server.last.welcome();
  const many = Array.from({ length: 101 }, (_, index) => `u${index}`);
  await assert.rejects(client.presence(many), { code: 'too_large' });
  await assert.rejects(client.presence(['bob', 'no spaces']), { code: 'bad_frame', message: 'invalid user id no spaces' });
  assert.deepEqual(server.last.written, []);
});

test('an error without id answers the oldest question: a rate-limited ping is dropped, a query rejected', async (t) => {
  const { server, client } = setup(t, { heartbeat: { intervalMs: 1000 } });
  const errors: string[] = [];
  client.on('error', (error) => errors.push(error.code));
  client.connect();
  server.last.welcome();
  t.mock.timers.tick(1000);
  const refused = client.presence(['bob']);
  const answered = client.presence(['carol']);
  server.last.frame({ type: 'error', code: 'rate_limited', message: 'over the rate limit: slow down' });
  server.last.frame({ type: 'error', code: 'rate_limited', message: 'over the rate limit: slow down' });
  server.last.frame({ type: 'presence', online: { carol: true } });
  await assert.rejects(refused, { code: 'rate_limited' });
  assert.deepEqual(await answered, { carol: true });
  // With no question open, an internal error is an ack's.
  server.last.frame({ type: 'error', code: 'internal', message: 'backend failed' });
  assert.deepEqual(errors, ['internal']);
});

test('a new epoch in a welcome is reported', (t) => {
  const { server, client, disconnects, tick } = setup(t);
  const changes: unknown[] = [];
  client.on('epoch', (change) => changes.push(change));
  client.connect();
  server.last.welcome({ epoch: 'e-1' });
  server.last.serverClose(1006);
  tick(disconnects.at(-1)?.delayMs ?? 0);
  server.last.welcome({ epoch: 'e-1' });
  assert.deepEqual(changes, []);
  server.last.serverClose(1006);
  tick(disconnects.at(-1)?.delayMs ?? 0);
  server.last.welcome({ epoch: 'e-2' });
  assert.deepEqual(changes, [{ previous: 'e-1', current: 'e-2' }]);
});

test('an unreadable frame is reported and the connection goes on', (t) => {
  const { server, client } = setup(t);
  const errors: string[] = [];
  client.on('error', (error) => errors.push(error.code));
  client.connect();
  server.last.welcome();
  server.last.frame({ type: 'future_frame' });
  server.last.text('{oops');
  server.last.text('null');
  assert.deepEqual(errors, ['unreadable_frame', 'unreadable_frame']);
  assert.equal(client.state, 'open');
});

test('close() rejects what is pending, closes the socket and stops reconnecting', async (t) => {
  const { server, client } = setup(t);
  const welcome = client.connect();
  const send = client.send('bob', 'one');
  const query = client.presence(['bob']);
  client.close();
  await assert.rejects(welcome, { code: 'client_closed' });
  await assert.rejects(send, { code: 'client_closed' });
  await assert.rejects(query, { code: 'client_closed' });
  await assert.rejects(client.send('bob', 'two'), { code: 'client_closed' });
  assert.deepEqual(server.last.closedByClient, { code: 1000, reason: 'client closed' });
  assert.equal(client.state, 'closed');
  t.mock.timers.tick(60_000);
  assert.equal(server.connections.length, 1);
});
