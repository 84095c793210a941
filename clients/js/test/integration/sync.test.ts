// Contract sections 8-10 with the client in Node against two real
// switchboard nodes sharing a real Redis: two devices of one user, a send
// to a group spread over both nodes, ephemeral sends and typing, the token
// refreshed in-band on a 3 s token, close 4001 at expiry, close 4003 from
// POST /v1/disconnect, and the MessagePack codec.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { type ClientOptions, SwitchboardClient } from '../../src/client.js';
import type { ClientFrame, Message, Receipt } from '../../src/protocol.js';
import { Wire, record, signToken, waitFor, waitUntil } from '../support/clients.js';
import { Cluster, within } from '../support/servers.js';

const SECRET = 'integration-test-secret';
const API_KEY = 'integration-test-api-key';
let cluster: Cluster;
const clients: SwitchboardClient[] = [];

before(async () => {
  cluster = await Cluster.start(2, ['--jwt-secret', SECRET, '--api-key', API_KEY]);
});

after(async () => {
  for (const client of clients) client.close();
  await cluster?.stop();
});

/** A user id no other test uses. */
function user(name: string): string {
  return `${name}-${randomUUID().slice(0, 8)}`;
}

function client(index: number, options: Partial<ClientOptions>): SwitchboardClient {
  const made = new SwitchboardClient({ url: cluster.node(index).wsUrl, storage: null, ...options });
  clients.push(made);
  return made;
}

/** A connected client on node `index` (0 or 1). */
async function connect(index: number, options: Partial<ClientOptions>): Promise<SwitchboardClient> {
  const made = client(index, options);
  await within('the welcome', 15_000, made.connect());
  return made;
}

function bodies(messages: Message[]): unknown[] {
  return messages.map((message) => message.body);
}

const isAck = (seq: number) => (frame: ClientFrame): frame is ClientFrame => frame.type === 'ack' && 'seq' in frame && frame.seq === seq;

test('two devices of one user: the phone, offline while the laptop acks, gets everything when it comes back', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = await connect(0, { user: aliceId });
  const laptopWire = new Wire();
  const laptop = await connect(1, { user: bobId, device: 'laptop', transport: laptopWire.transport });
  // The phone is seen once, so that the log keeps what it has not acked.
  const firstPhone = await connect(0, { user: bobId, device: 'phone' });
  firstPhone.close();
  const atLaptop = record(laptop, 'message');
  const receipts = record(alice, 'receipt');

  const texts = ['one', 'two', 'three', 'four', 'five'];
  const answers = await Promise.all(texts.map((text) => alice.send(bobId, text)));
  await waitUntil(laptop, 'message', 'five messages at the laptop', () => atLaptop.length === 5);
  await laptopWire.written('the laptop to ack seq 5', isAck(5));
  await waitUntil(alice, 'receipt', 'a receipt for each', () => receipts.length === 5);
  assert.deepEqual(bodies(atLaptop), texts);
  assert.deepEqual(
    atLaptop.map((message) => message.seq),
    [1, 2, 3, 4, 5],
  );
  // Cumulative acks only, never one per message past the first of a burst.
  const laptopAcks = laptopWire.connections.flatMap((traffic) => traffic.written.filter((frame) => frame.type === 'ack'));
  assert.ok(laptopAcks.length >= 1 && laptopAcks.length <= 5, JSON.stringify(laptopAcks));
  assert.deepEqual(laptopAcks.at(-1), { type: 'ack', seq: 5 });
  assert.ok(laptopAcks.every((frame) => 'seq' in frame));
  assert.equal(laptop.seq, 5);

  const phoneWire = new Wire();
  // The replay is one burst: with a second to gather it, one ack frame covers it.
  const phone = client(1, { user: bobId, device: 'phone', transport: phoneWire.transport, ackDelayMs: 1000 });
  const atPhone = record(phone, 'message');
  const welcome = await within('the phone to connect', 15_000, phone.connect());
  assert.equal(welcome.device, 'phone');
  assert.equal(welcome.seq, 5);
  await waitUntil(phone, 'message', 'five messages at the phone', () => atPhone.length === 5);
  assert.deepEqual(bodies(atPhone), texts);
  assert.deepEqual(
    atPhone.map((message) => message.msg),
    answers.map((answer) => answer.msg),
  );
  await phoneWire.written('the phone to ack seq 5', isAck(5));
  assert.deepEqual(
    phoneWire.connections.map((traffic) => traffic.written.filter((frame) => frame.type === 'ack')),
    [[{ type: 'ack', seq: 5 }]],
  );

  // The laptop's cursor is on the server: a new laptop client is replayed nothing.
  laptop.close();
  const laptopAgain = await connect(0, { user: bobId, device: 'laptop' });
  const again = record(laptopAgain, 'message');
  const six = waitFor(laptopAgain, 'message', 'the sixth message');
  const sixth = await alice.send(bobId, 'six');
  assert.equal((await six).msg, sixth.msg);
  assert.deepEqual(
    again.map((message) => [message.seq, message.body]),
    [[6, 'six']],
  );
  await waitUntil(alice, 'receipt', 'the receipt of the sixth', () => receipts.length === 6);
  assert.deepEqual(
    receipts.map((receipt) => receipt.msg).sort(),
    [...answers.map((answer) => answer.msg), sixth.msg].sort(),
    'one receipt per message, from the first device that acked',
  );
});

test('a send to a group of 50 users on 2 nodes: one accepted with 50 results, each member its message once, 50 receipts', async () => {
  const aliceId = user('alice');
  const members = Array.from({ length: 50 }, (_, index) => user(`member${index}`));
  const alice = await connect(0, { user: aliceId });
  const memberClients = await Promise.all(members.map((member, index) => connect(index % 2, { user: member })));
  const received = memberClients.map((member) => record(member, 'message'));
  const receipts = record(alice, 'receipt');

  const accepted = await alice.send(members, { text: 'hello group' }, { id: 'group-1' });
  assert.equal(accepted.status, 'routed');
  assert.deepEqual(accepted.recipients, Object.fromEntries(members.map((member) => [member, 'routed'])));
  await Promise.all(
    memberClients.map((member, index) =>
      waitUntil(member, 'message', `the message at ${members[index]}`, () => (received[index]?.length ?? 0) > 0),
    ),
  );
  members.forEach((member, index) => {
    assert.deepEqual(
      received[index]?.map((message) => [message.msg, message.from, message.to, message.seq, message.body]),
      [[accepted.msg, aliceId, member, 1, { text: 'hello group' }]],
    );
  });
  await waitUntil(alice, 'receipt', '50 receipts', () => receipts.length === 50);
  assert.deepEqual(
    receipts.map((receipt: Receipt) => receipt.user).sort(),
    [...members].sort(),
  );
  assert.ok(receipts.every((receipt) => receipt.id === 'group-1' && receipt.msg === accepted.msg));
});

test('ephemeral sends and typing: live only, to whoever is online; nothing logged, nothing replayed', async () => {
  const [aliceId, bobId, carolId] = [user('alice'), user('bob'), user('carol')];
  const alice = await connect(0, { user: aliceId });
  const bob = await connect(1, { user: bobId });
  // A logged message first: once it is at bob, alice's node routes to bob's.
  const bobsMessages = record(bob, 'message');
  const hello = waitFor(bob, 'message', 'the first message');
  await alice.send(bobId, 'hello');
  await hello;
  const typing = waitFor(bob, 'typing', 'typing at bob');
  assert.equal(alice.typing([bobId, carolId]), true);
  assert.equal(alice.typing([bobId, carolId]), false, 'throttled');
  assert.deepEqual(await typing, { from: aliceId, to: bobId });
  const cursor = waitFor(bob, 'message', 'the ephemeral message');
  const routed = await alice.send(bobId, { x: 1 }, { ephemeral: true });
  assert.equal(routed.status, 'routed');
  const live = await cursor;
  assert.deepEqual([live.msg, live.body, live.seq], [routed.msg, { x: 1 }, undefined]);
  assert.deepEqual(
    bobsMessages.map((message) => message.body),
    ['hello', { x: 1 }],
    'typing is not a message',
  );
  const offline = await alice.send(carolId, { x: 2 }, { ephemeral: true });
  assert.equal(offline.status, 'offline');
  // A logged message after them: carol's replay holds it alone, with seq 1.
  await alice.send(carolId, 'logged');
  const carol = client(0, { user: carolId });
  const atCarol = record(carol, 'message');
  const first = waitFor(carol, 'message', "carol's replay");
  assert.equal((await within('carol to connect', 15_000, carol.connect())).seq, 1);
  await first;
  assert.deepEqual(
    atCarol.map((message) => [message.seq, message.body]),
    [[1, 'logged']],
  );
});

test('a 3 s token is refreshed in-band before it expires: the connection outlives it, no reconnect', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = client(0, { token: () => signToken(SECRET, aliceId, 3) });
  const welcomes = record(alice, 'welcome');
  const disconnects = record(alice, 'disconnect');
  const refreshed = record(alice, 'refreshed');
  const welcome = await within('the welcome', 15_000, alice.connect());
  assert.equal(welcome.user, aliceId);
  const exp = welcome.exp ?? 0;
  assert.ok(exp > Date.now() / 1000 && exp <= Date.now() / 1000 + 3, `exp ${exp}`);
  // Refreshed again and again, past the first token's exp.
  await waitUntil(alice, 'refreshed', 'two refreshes, past the first exp', () => refreshed.length >= 2 && Date.now() / 1000 > exp);
  const exps = [exp, ...refreshed.map((event) => event.exp)];
  exps.slice(1).forEach((later, index) => assert.ok(later > (exps[index] ?? 0), `exps ${exps}`));
  const bob = await connect(1, { user: bobId });
  const received = waitFor(bob, 'message', 'the message after the first exp');
  await alice.send(bobId, 'still here');
  assert.equal((await received).body, 'still here');
  assert.equal(welcomes.length, 1);
  assert.deepEqual(disconnects, []);
});

test('a refresh refused with bad_token: close 4001 at expiry, then a reconnect at once with a fresh token', async () => {
  const aliceId = user('alice');
  const tokens = [signToken(SECRET, aliceId, 2), signToken(SECRET, user('mallory'), 3600), signToken(SECRET, aliceId, 3600)];
  const alice = client(0, { token: () => tokens.shift() ?? 'no more tokens' });
  const errors = record(alice, 'error');
  const first = await within('the welcome', 15_000, alice.connect());
  const closed = waitFor(alice, 'disconnect', 'close 4001');
  const second = waitFor(alice, 'welcome', 'the second welcome');
  assert.deepEqual(await closed, { code: 4001, reason: 'token expired', delayMs: 0 });
  assert.ok(Date.now() / 1000 >= (first.exp ?? 0) - 1);
  const again = await second;
  assert.equal(again.user, aliceId);
  assert.ok((again.exp ?? 0) > Date.now() / 1000 + 3000);
  assert.deepEqual(
    errors.map((error) => error.code),
    ['bad_token'],
  );
  assert.deepEqual(tokens, []);
});

test('POST /v1/disconnect: 4003 stops the matching clients with the reason; a device-only one leaves the others', async () => {
  const bobId = user('bob');
  const laptop = await connect(0, { user: bobId, device: 'laptop' });
  const phone = await connect(1, { user: bobId, device: 'phone' });
  const disconnect = async (body: object) => {
    const response = await fetch(`${cluster.node(0).httpUrl}/v1/disconnect`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(response.status, 200);
    return response.json();
  };

  const phoneStopped = waitFor(phone, 'disconnected', 'the phone to stop');
  assert.deepEqual(await disconnect({ user: bobId, device: 'phone', reason: 'lost phone' }), { closed: 1 });
  assert.deepEqual(await phoneStopped, { code: 4003, reason: 'disconnected' });
  assert.equal(phone.state, 'closed');
  assert.equal(laptop.state, 'open');

  const laptopStopped = waitFor(laptop, 'disconnected', 'the laptop to stop');
  assert.deepEqual(await disconnect({ user: bobId }), { closed: 1 });
  assert.deepEqual(await laptopStopped, { code: 4003, reason: 'disconnected' });
  assert.equal(laptop.state, 'closed');
  await assert.rejects(laptop.send(bobId, 'x'), { code: 'client_closed' });
});

test("codec 'msgpack' against a real node: binary frames both ways, the same messages and acks", async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = await connect(0, { user: aliceId, codec: 'msgpack' });
  const bob = await connect(1, { user: bobId, codec: 'msgpack' });
  const atBob = record(bob, 'message');
  const receipts = record(alice, 'receipt');
  const body = { text: 'packed', n: [1, -2, 2.5], nested: { ok: true, none: null } };
  const answers = [await alice.send(bobId, body), await alice.send([bobId, aliceId], 'to a list')];
  assert.deepEqual(answers[1]?.recipients, { [bobId]: 'routed', [aliceId]: 'routed' });
  await waitUntil(bob, 'message', 'two messages at bob', () => atBob.length === 2);
  assert.deepEqual(
    atBob.map((message) => [message.msg, message.from, message.seq, message.body]),
    [
      [answers[0]?.msg, aliceId, 1, body],
      [answers[1]?.msg, aliceId, 2, 'to a list'],
    ],
  );
  await waitUntil(alice, 'receipt', 'receipts from bob', () => receipts.filter((receipt) => receipt.user !== aliceId).length === 2);
});
