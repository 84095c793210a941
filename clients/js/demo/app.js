// The demo chat: one SwitchboardClient per login, on the node that served
// the page. It shows what the SDK gives an application: who is online
// (presence, asked every few seconds), messages shown once each, and the
// state of each sent message: pending until `accepted` (written again
// after a reconnect), then one tick, then two at its `receipt`.

import { SwitchboardClient } from './sdk/index.js';

const PRESENCE_EVERY_MS = 3000;

const $ = (id) => document.getElementById(id);
const ticks = { pending: '…', accepted: '✓', delivered: '✓✓', failed: '✗' };

/** @type {SwitchboardClient | null} */
let client = null;
let me = '';
/** Contacts by user id: whether online, how many messages not yet seen. */
const contacts = new Map();
/** The messages of each conversation, by the other user's id, oldest first. */
const conversations = new Map();
/** Sent messages by send id, to find them again at their receipt. */
const sent = new Map();
let selected = '';
let presenceTimer;
let sequence = 0;

function websocketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws`;
}

function conversation(peer) {
  if (!conversations.has(peer)) conversations.set(peer, []);
  return conversations.get(peer);
}

function addContact(user) {
  if (contacts.has(user)) return;
  contacts.set(user, { online: false, unread: 0 });
  renderContacts();
  askPresence();
}

function select(user) {
  selected = user;
  const contact = contacts.get(user);
  if (contact) contact.unread = 0;
  $('peer').textContent = user;
  $('text').disabled = false;
  $('compose').querySelector('button').disabled = false;
  renderContacts();
  renderMessages();
}

function renderContacts() {
  const list = $('contacts');
  list.replaceChildren();
  for (const [user, contact] of contacts) {
    const item = document.createElement('li');
    item.dataset.user = user;
    item.dataset.online = String(contact.online);
    item.setAttribute('aria-current', String(user === selected));
    item.title = contact.online ? 'online' : 'offline';
    item.append(user);
    if (contact.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(contact.unread);
      item.append(badge);
    }
    item.addEventListener('click', () => select(user));
    list.append(item);
  }
}

function renderMessages() {
  const list = $('messages');
  list.replaceChildren();
  for (const entry of conversations.get(selected) ?? []) {
    const item = document.createElement('li');
    item.dataset.from = entry.from;
    item.dataset.state = entry.state;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = entry.text;
    item.append(text);
    if (entry.from === me) {
      item.className = 'mine';
      const tick = document.createElement('span');
      tick.className = 'tick';
      tick.textContent = ticks[entry.state];
      tick.title = entry.problem ?? entry.state;
      item.append(tick);
    }
    list.append(item);
  }
  list.scrollTop = list.scrollHeight;
}

function showStatus(state, text) {
  const status = $('status');
  status.dataset.state = state;
  status.textContent = text;
}

function askPresence() {
  if (!client || client.state !== 'open' || contacts.size === 0) return;
  const users = [...contacts.keys()].slice(0, 100);
  client.presence(users).then(
    (online) => {
      for (const [user, isOnline] of Object.entries(online)) {
        const contact = contacts.get(user);
        if (contact) contact.online = isOnline;
      }
      renderContacts();
    },
    () => {}, // asked again at the next tick
  );
}

function logIn(user) {
  me = user;
  client = new SwitchboardClient({ url: websocketUrl(), user, reconnect: { maxDelayMs: 5000 } });
  client.on('state', (state) => {
    if (state === 'connecting') showStatus(state, `${me} · connecting…`);
  });
  client.on('welcome', (welcome) => {
    showStatus('open', `${welcome.user} · connected to node ${welcome.node}`);
    $('status').dataset.node = welcome.node;
    askPresence();
  });
  client.on('disconnect', (event) => {
    const seconds = (event.delayMs / 1000).toFixed(1);
    showStatus('waiting', `${me} · disconnected (${event.code} ${event.reason}), retrying in ${seconds}s`);
  });
  client.on('message', (message) => {
    addContact(message.from);
    const text = typeof message.body === 'string' ? message.body : JSON.stringify(message.body);
    conversation(message.from).push({ from: message.from, text, state: 'delivered' });
    if (!selected) select(message.from);
    else if (message.from === selected) renderMessages();
    else {
      contacts.get(message.from).unread += 1;
      renderContacts();
    }
  });
  client.on('receipt', (receipt) => {
    const entry = sent.get(receipt.id);
    if (!entry) return;
    entry.state = 'delivered';
    renderMessages();
  });
  client.connect();
  presenceTimer = setInterval(askPresence, PRESENCE_EVERY_MS);
  $('login').hidden = true;
  $('chat').hidden = false;
  $('logout').hidden = false;
}

function logOut() {
  client?.close();
  client = null;
  clearInterval(presenceTimer);
  contacts.clear();
  conversations.clear();
  sent.clear();
  selected = '';
  $('peer').textContent = 'Pick a contact';
  renderContacts();
  renderMessages();
  showStatus('idle', 'not logged in');
  $('login').hidden = false;
  $('chat').hidden = true;
  $('logout').hidden = true;
}

function send(text) {
  // The send id names the message here too: its receipt carries it.
  const id = `demo-${Date.now().toString(36)}-${++sequence}`;
  const entry = { from: me, text, state: 'pending' };
  sent.set(id, entry);
  conversation(selected).push(entry);
  renderMessages();
  client.send(selected, text, { id }).then(
    () => {
      if (entry.state === 'pending') entry.state = 'accepted';
      renderMessages();
    },
    (error) => {
      entry.state = 'failed';
      entry.problem = error.message;
      renderMessages();
    },
  );
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  logIn($('login-user').value.trim());
});

$('logout').addEventListener('click', logOut);

$('add-contact').addEventListener('submit', (event) => {
  event.preventDefault();
  const user = $('contact-user').value.trim();
  $('contact-user').value = '';
  addContact(user);
  select(user);
});

$('compose').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value;
  $('text').value = '';
  send(text);
});
