// The demo page in headless Chromium, served by two real nodes run with
// `--demo` that share a real Redis, typing and clicking as people would:
// two users chatting, one on each node; then a group of three users, one of
// them in two tabs (two devices), with typing shown. Each time a node
// restarts on the same port meanwhile: its pages reconnect by themselves,
// and nothing sent to them or by them meanwhile is lost or shown twice.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';

import { signToken } from '../test/support/clients.js';
import { Cluster, type SwitchboardNode } from '../test/support/servers.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SECRET = 'e2e-test-secret';
let cluster: Cluster;
let browser: Browser;
const pageErrors: string[] = [];

before(async () => {
  cluster = await Cluster.start(2, ['--demo', '--jwt-secret', SECRET]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root, without a sandbox; and no calls home on a machine without a network.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

/**
 * `node`'s demo page logged in as `user`, in a new browser context, or in
 * a new tab of `context` (a tab is a device of its own).
 */
async function logIn(node: SwitchboardNode, user: string, context?: BrowserContext): Promise<Page> {
  const page = await (context ?? (await browser.newContext())).newPage();
  page.setDefaultTimeout(20_000);
  page.on('pageerror', (error) => pageErrors.push(`${user}: ${error.message}`));
  await page.goto(`${node.httpUrl}/demo`);
  await page.fill('#login-user', user);
  await page.click('#login button');
  await page.waitForSelector(`#status[data-state="open"][data-node="${node.settings.nodeId}"]`);
  await page.waitForSelector('#login', { state: 'hidden' });
  return page;
}

async function sendText(page: Page, text: string): Promise<void> {
  await page.fill('#text', text);
  await page.click('#compose button');
}

/** This page's device id, as its status shows it. */
async function device(page: Page): Promise<string> {
  return (await page.getAttribute('#status', 'data-device')) ?? '';
}

/** The texts of the messages from `from` in the open conversation. */
function texts(page: Page, from: string): Promise<string[]> {
  return page.locator(`#messages li[data-from="${from}"] .text`).allTextContents();
}

/**
 * Waits until the open conversation shows exactly `states.length` messages
 * from `from`, in these states (`pending`, `accepted` or `delivered` for
 * one's own, `delivered` for those received).
 */
async function waitForMessages(page: Page, from: string, ...states: string[]): Promise<void> {
  await page.waitForFunction(
    ({ from, states }) => {
      const items = [...document.querySelectorAll(`#messages li[data-from="${from}"]`)] as HTMLElement[];
      return items.map((item) => item.dataset.state).join() === states.join();
    },
    { from, states },
  );
}

test("the browser's own WebSocket carries the token in the subprotocol list, never echoed", async () => {
  const page = await (await browser.newContext()).newPage();
  await page.goto(`${cluster.node(0).httpUrl}/demo`);
  const open = (token: string) =>
    page.evaluate(
      ({ url, token }) =>
        new Promise<{ protocol: string; first: unknown } | { closed: number }>((resolve) => {
          const socket = new WebSocket(url, ['switchboard.v1.json', `switchboard.token.${token}`]);
          socket.onmessage = (event) => {
            resolve({ protocol: socket.protocol, first: JSON.parse(String(event.data)) });
            socket.close();
          };
          socket.onclose = (event) => resolve({ closed: event.code });
        }),
      { url: cluster.node(0).wsUrl, token },
    );
  const good = await open(signToken(SECRET, 'carol', 3600));
  assert.ok('protocol' in good, JSON.stringify(good));
  assert.equal(good.protocol, 'switchboard.v1.json');
  const welcome = good.first as { type: string; user: string; exp: number };
  assert.deepEqual([welcome.type, welcome.user, typeof welcome.exp], ['welcome', 'carol', 'number']);
  // A refused upgrade is a failed connection to a browser: 1006, no welcome.
  assert.deepEqual(await open(signToken('another-secret', 'carol', 3600)), { closed: 1006 });
  assert.deepEqual(pageErrors, []);
});

test('two pages on two nodes chat with receipts; a restarted node loses nothing', async () => {
  const alice = await logIn(cluster.node(0), 'alice');
  const bob = await logIn(cluster.node(1), 'bob');

  await alice.fill('#contact-user', 'bob');
  await alice.click('#add-contact button');
  await alice.waitForSelector('#contacts li[data-user="bob"][data-online="true"]');

  await sendText(alice, 'hello bob');
  await waitForMessages(bob, 'alice', 'delivered');
  await waitForMessages(alice, 'alice', 'delivered');
  await bob.waitForSelector('#contacts li[data-user="alice"][aria-current="true"]');
  await sendText(bob, 'hello alice');
  await waitForMessages(alice, 'bob', 'delivered');
  await waitForMessages(bob, 'bob', 'delivered');

  // Bob's node drains (close 1012) and exits; his page keeps trying.
  const terminated = cluster.node(1).terminate();
  await bob.waitForSelector('#status:not([data-state="open"])');
  await terminated;
  for (const text of ['away 1', 'away 2', 'away 3']) await sendText(alice, text);
  await waitForMessages(alice, 'alice', 'delivered', 'accepted', 'accepted', 'accepted');
  await sendText(bob, 'written while away');
  await waitForMessages(bob, 'bob', 'delivered', 'pending');

  await cluster.startAgain(1);
  await bob.waitForSelector('#status[data-state="open"][data-node="n2"]');
  await sendText(alice, 'after the restart');
  await waitForMessages(bob, 'alice', ...Array(5).fill('delivered'));
  assert.deepEqual(await texts(bob, 'alice'), ['hello bob', 'away 1', 'away 2', 'away 3', 'after the restart']);
  await waitForMessages(alice, 'alice', ...Array(5).fill('delivered'));
  await waitForMessages(alice, 'bob', 'delivered', 'delivered');
  assert.deepEqual(await texts(alice, 'bob'), ['hello alice', 'written while away']);
  await waitForMessages(bob, 'bob', 'delivered', 'delivered');
  assert.deepEqual(pageErrors, []);
});

test('a group of three, one user on two tabs as two devices: typing shown; a restarted node loses nothing, shows nothing twice', async () => {
  // carol on two tabs of one browser, one on each node: two devices of one user.
  const carolOne = await logIn(cluster.node(0), 'carol');
  const carolTwo = await logIn(cluster.node(1), 'carol', carolOne.context());
  const dave = await logIn(cluster.node(0), 'dave');
  const erin = await logIn(cluster.node(1), 'erin');
  assert.notEqual(await device(carolOne), await device(carolTwo));
  assert.match(await device(carolOne), /^d-[a-z0-9]{20}$/);

  await dave.fill('#group-name', 'team');
  await dave.fill('#group-members', 'carol, erin');
  await dave.click('#add-group button');
  await dave.waitForSelector('#contacts li[data-group="team"][aria-current="true"]');
  await sendText(dave, 'hello team');
  for (const page of [carolOne, carolTwo, erin]) {
    await page.waitForSelector('#contacts li[data-group="team"][aria-current="true"]');
    await waitForMessages(page, 'dave', 'delivered');
  }
  await waitForMessages(dave, 'dave', 'delivered');

  // erin types: dave and both of carol's tabs see it.
  await erin.type('#text', 'h');
  await Promise.all([dave, carolOne, carolTwo].map((page) => page.waitForSelector('#typing[data-user="erin"]')));
  assert.equal(await dave.textContent('#typing'), 'erin is typing…');
  await erin.fill('#text', '');

  // The node of erin and carol's second tab drains and exits; their pages keep trying.
  const terminated = cluster.node(1).terminate();
  await carolTwo.waitForSelector('#status:not([data-state="open"])');
  await erin.waitForSelector('#status:not([data-state="open"])');
  await terminated;
  for (const text of ['away 1', 'away 2']) await sendText(dave, text);
  await sendText(carolOne, 'carol here');
  await waitForMessages(carolOne, 'carol', 'delivered');

  await cluster.startAgain(1);
  for (const page of [carolTwo, erin]) await page.waitForSelector('#status[data-state="open"][data-node="n2"]');
  await sendText(dave, 'after the restart');
  const fromDave = ['hello team', 'away 1', 'away 2', 'after the restart'];
  for (const page of [carolOne, carolTwo, erin]) {
    await waitForMessages(page, 'dave', ...fromDave.map(() => 'delivered'));
    assert.deepEqual(await texts(page, 'dave'), fromDave);
  }
  await waitForMessages(dave, 'dave', ...fromDave.map(() => 'delivered'));
  assert.deepEqual(await texts(dave, 'dave'), fromDave);
  // carol's message: at dave and erin, and at her other device, once each.
  for (const page of [dave, erin]) {
    await waitForMessages(page, 'carol', 'delivered');
    assert.deepEqual(await texts(page, 'carol'), ['carol here']);
  }
  await waitForMessages(carolTwo, 'carol', 'accepted');
  assert.deepEqual(await texts(carolTwo, 'carol'), ['carol here']);
  assert.deepEqual(await texts(carolOne, 'carol'), ['carol here']);
  assert.deepEqual(pageErrors, []);
});
