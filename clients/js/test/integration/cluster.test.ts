// The client in Node against two real switchboard nodes sharing a real
// Redis: every user is on its own node, so each message crosses nodes.
// Lost frames are made with a Wire around the real WebSocket; the server's
// answers are real.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { type ClientOptions, SwitchboardClient } from '../../src/client.js';
import type { Accepted, ClientFrame, Message, ServerFrame } from '../../src/protocol.js';
import { wxTransport } from '../../src/transports.js';
import { Wire, nodeWx, record, signToken, waitFor, waitUntil } from '../support/clients.js';
import { Cluster, within } from '../support/servers.js';

const SECRET = 'integration-test-secret';
let cluster: Cluster;
const clients: SwitchboardClient[] = [];

before(async () => {
  cluster = await Cluster.start(2, ['--jwt-secret', SECRET]);
});

after(async () => {
  for (const client of clients) client.close();
  await cluster?.stop();
});

/** A user id no other test uses. */
function user(name: string): string {
  return `${name}-${randomUUID().slice(0, 8)}`;
}

/** A connected client on node `index` (0 or 1). */
async function connect(index: number, options: Partial<ClientOptions> & { user?: string }): Promise<SwitchboardClient> {
  const client = new SwitchboardClient({ url: cluster.node(index).wsUrl, ...options });
  clients.push(client);
  await within('the welcome', 15_000, client.connect());
  return client;
}

function bodies(messages: Message[]): unknown[] {
  return messages.map((message) => message.body);
}

test('across nodes: accepted, the message, its receipt, and presence', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = await connect(0, { user: aliceId });
  const bob = await connect(1, { user: bobId });
  const received = waitFor(bob, 'message', 'the message at bob');
  const receipt = waitFor(alice, 'receipt', 'the receipt at alice');

  const accepted = await alice.send(bobId, { text: 'hello' }, { id: 'greeting-1' });
  assert.equal(accepted.id, 'greeting-1');
  assert.equal(accepted.status, 'routed');
  const message = await received;
  assert.deepEqual(message, { ...message, msg: accepted.msg, from: aliceId, to: bobId, body: { text: 'hello' } });
  assert.deepEqual(await receipt, { type: 'receipt', id: 'greeting-1', msg: accepted.msg, status: 'delivered' });

  const nobody = user('nobody');
  assert.deepEqual(await alice.presence([nobody, bobId]), { [bobId]: true, [nobody]: false });
});

test('a send whose accepted was lost is written again on the next connection and delivered once', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const aliceWire = new Wire();
  const bobWire = new Wire();
  const alice = await connect(0, { user: aliceId, transport: aliceWire.transport });
  const bob = await connect(1, { user: bobId, transport: bobWire.transport });
  const shown = record(bob, 'message');

  aliceWire.loseReceived = (frame) => frame.type === 'accepted' && frame.id === 'once-1';
  const sent = alice.send(bobId, 'once', { id: 'once-1' });
  const lost = await aliceWire.received('the first accepted', (frame): frame is Accepted => frame.type === 'accepted');
  aliceWire.loseReceived = undefined;
  aliceWire.cutConnection();

  const accepted = await within('the accepted after the reconnect', 15_000, sent);
  assert.equal(accepted.msg, lost.msg, 'the server deduped the resend');
  assert.deepEqual(
    aliceWire.connections.map((traffic) => traffic.written.filter((frame) => frame.type === 'send')),
    [
      [{ type: 'send', id: 'once-1', to: bobId, body: 'once' }],
      [{ type: 'send', id: 'once-1', to: bobId, body: 'once' }],
    ],
  );
  // From one connection to one recipient, order holds: a second copy would come before this.
  const after = waitFor(bob, 'message', 'the message after', (message) => message.body === 'after');
  await alice.send(bobId, 'after');
  await after;
  const onBobsWire = bobWire.connections.flatMap((traffic) => traffic.received).filter((f) => f.type === 'message');
  assert.deepEqual(bodies(onBobsWire as Message[]), ['once', 'after']);
  assert.deepEqual(bodies(shown), ['once', 'after']);
});

test('a message whose ack was lost comes again on the next connection; it is shown once, and acked', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const bobWire = new Wire();
  const alice = await connect(0, { user: aliceId });
  const bob = await connect(1, { user: bobId, transport: bobWire.transport });
  const shown = record(bob, 'message');

  bobWire.loseWritten = (frame) => frame.type === 'ack';
  const receipt = waitFor(alice, 'receipt', 'the receipt of the replayed message');
  const received = waitFor(bob, 'message', 'the message', (message) => message.body === 'ack me');
  const lostAck = bobWire.written('the first ack', (frame): frame is ClientFrame => frame.type === 'ack');
  const accepted = await alice.send(bobId, 'ack me');
  assert.equal((await received).msg, accepted.msg);
  await lostAck;
  bobWire.loseWritten = undefined;
  bobWire.cutConnection();

  // The receipt follows the ack that bob's second connection wrote for the replay.
  assert.equal((await receipt).msg, accepted.msg);
  const isIt = (frame: ServerFrame) => frame.type === 'message' && frame.msg === accepted.msg;
  assert.deepEqual(
    bobWire.connections.map((traffic) => traffic.received.filter(isIt).length),
    [1, 1],
  );
  assert.deepEqual(
    bobWire.connections.map((traffic) => traffic.written.filter((frame) => frame.type === 'ack')),
    [[{ type: 'ack', seq: 1 }], [{ type: 'ack', seq: 1 }]],
  );
  assert.deepEqual(
    shown.map((message) => message.msg),
    [accepted.msg],
  );
});

test('what is sent to an offline user waits in its inbox and comes at connect, in order, once', async () => {
  const [aliceId, bobId] = [user('alice'), user('bob')];
  const alice = await connect(0, { user: aliceId });
  const answers = await Promise.all(['one', 'two', 'three'].map((text) => alice.send(bobId, text)));
  assert.deepEqual(
    answers.map((answer) => answer.status),
    ['stored', 'stored', 'stored'],
  );
  const bob = new SwitchboardClient({ url: cluster.node(1).wsUrl, user: bobId });
  clients.push(bob);
  const shown = record(bob, 'message');
  const receipts = record(alice, 'receipt');
  bob.connect();
  await waitUntil(alice, 'receipt', 'three receipts', () => receipts.length === 3);
  assert.deepEqual(bodies(shown), ['one', 'two', 'three']);
  assert.deepEqual(new Set(receipts.map((receipt) => receipt.msg)), new Set(answers.map((answer) => answer.msg)));
});

test('the token callback gives a new token to each attempt: an expired one is refused, the next connects', async () => {
  const aliceId = user('alice');
  const tokens = [signToken(SECRET, aliceId, -60), signToken(SECRET, aliceId, 3600)];
  const client = new SwitchboardClient({
    url: cluster.node(0).wsUrl,
    token: () => tokens.shift() ?? 'no more tokens',
    reconnect: { initialDelayMs: 100 },
  });
  clients.push(client);
  const disconnects = record(client, 'disconnect');
  const welcome = await within('the welcome', 15_000, client.connect());
  assert.equal(welcome.user, aliceId);
  assert.deepEqual(
    disconnects.map((event) => event.code),
    [1006],
  );
  assert.deepEqual(tokens, []);
});

test('the mini-program transport authenticates with the Authorization header', async () => {
  const [wxUser, bobId] = [user('wx'), user('bob')];
  const client = new SwitchboardClient({
    url: cluster.node(1).wsUrl,
    token: signToken(SECRET, wxUser, 3600),
    transport: wxTransport(nodeWx()),
  });
  clients.push(client);
  const welcome = await within('the welcome', 15_000, client.connect());
  assert.equal(welcome.user, wxUser);
  const bob = await connect(0, { user: bobId });
  const received = waitFor(bob, 'message', 'the message from the mini-program');
  await client.send(bobId, 'from wx');
  assert.equal((await received).from, wxUser);
});
