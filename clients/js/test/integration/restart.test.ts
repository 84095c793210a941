// A node goes away under a client (SIGTERM: close 1012): the client moves
// to the other node, and nothing sent to it or by it meanwhile is lost or
// shown twice.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { SwitchboardClient } from '../../src/client.js';
import { record, waitFor, waitUntil } from '../support/clients.js';
import { Cluster, within } from '../support/servers.js';

let cluster: Cluster;
const clients: SwitchboardClient[] = [];

before(async () => {
  cluster = await Cluster.start(2);
});

after(async () => {
  for (const client of clients) client.close();
  await cluster?.stop();
});

test('after close 1012 the client reconnects to the next node and loses nothing', async () => {
  const alice = new SwitchboardClient({ url: cluster.node(0).wsUrl, user: 'alice' });
  const bob = new SwitchboardClient({ url: [cluster.node(1).wsUrl, cluster.node(0).wsUrl], user: 'bob' });
  clients.push(alice, bob);
  await within('alice to connect', 15_000, alice.connect());
  assert.equal((await within('bob to connect', 15_000, bob.connect())).node, 'n2');
  const shown = record(bob, 'message');
  const receipts = record(alice, 'receipt');
  const atAlice = record(alice, 'message');

  for (const text of ['before 1', 'before 2']) await alice.send('bob', text);
  await waitUntil(bob, 'message', 'the messages before', () => shown.length === 2);

  const closed = waitFor(bob, 'disconnect', 'close 1012');
  const terminated = cluster.node(1).terminate();
  assert.equal((await closed).code, 1012);
  // Sent while bob has no connection: alice's wait in the inbox, bob's in the client.
  const whileAway = ['away 1', 'away 2', 'away 3'].map((text) => alice.send('bob', text));
  const fromBob = bob.send('alice', 'from bob while away');
  const back = await within('bob to reconnect', 15_000, bob.connect());
  assert.equal(back.node, 'n1');
  await Promise.all([...whileAway, fromBob, terminated]);

  await alice.send('bob', 'after');
  await waitUntil(bob, 'message', 'the message after', () => shown.length === 6);
  assert.deepEqual(
    shown.map((message) => message.body),
    ['before 1', 'before 2', 'away 1', 'away 2', 'away 3', 'after'],
  );
  await waitUntil(alice, 'message', "bob's message", () => atAlice.length === 1);
  assert.deepEqual(
    atAlice.map((message) => message.body),
    ['from bob while away'],
  );
  await waitUntil(alice, 'receipt', 'a receipt for each', () => receipts.length === 6);
  assert.deepEqual(new Set(receipts.map((receipt) => receipt.msg)), new Set(shown.map((message) => message.msg)));
});
