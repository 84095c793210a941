// The demo page in headless Chromium, served by two real nodes run with
// `--demo` that share a real Redis: alice's page on one node, bob's on the
// other, typing and clicking as people would. Then bob's node restarts on
// the same port: his page reconnects by itself, and nothing sent to him or
// by him meanwhile is lost or shown twice.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { type Browser, type Page, chromium } from 'playwright-core';

import { Cluster, type SwitchboardNode } from '../test/support/servers.js';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
let cluster: Cluster;
let browser: Browser;
const pageErrors: string[] = [];

before(async () => {
  cluster = await Cluster.start(2, ['--demo']);
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

/** A new browser context on `node`'s demo page, logged in as `user`. */
async function logIn(node: SwitchboardNode, user: string): Promise<Page> {
  const page = await (await browser.newContext()).newPage();
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
