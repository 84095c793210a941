// The demo chat: one SwitchboardClient per login, on the node that served
// the page. It shows what the SDK gives an application:
//
// - Each tab is a device of its own (the SDK keeps its device id in this
//   tab's sessionStorage): log in as the same user in two tabs and both get
//   every message, also those that came while one of them was away.
// - What a device sends goes to the recipients and to the sender's own
//   user, so that its other devices show it too; the sending device knows
//   its copy by the send id in the body.
// - Groups: a send to the list of members, one message id for all.
// - Typing indicators: `typing()` on input, shown for a few seconds.
// - Who is online (presence, asked every few seconds), messages shown once
//   each, and the state of each sent message: pending until `accepted`
//   (written again after a reconnect), then one tick, then two at the
//   first recipient's `receipt`.

import { SwitchboardClient } from './sdk/index.js';

const PRESENCE_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 4000;

const $ = (id) => document.getElementById(id);
const ticks = { pending: '…', accepted: '✓', delivered: '✓✓', failed: '✗' };

/** @type {SwitchboardClient | null} */
let client = null;
let me = '';
/**
 * Conversations by key (`user:ID` or `group:NAME`): the other user or the
 * group's members, whether online (users), how many messages not yet seen,
 * the messages, oldest first.
 */
const chats = new Map();
/** Sent messages by send id, to find them again at their receipt and to know this device's own copies. */
const sent = new Map();
let selected = '';
let presenceTimer;
let typingTimer;
let sequence = 0;

function websocketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws`;
}

function chat(key, fields) {
  let entry = chats.get(key);
  if (!entry) {
    entry = { online: false, unread: 0, messages: [], ...fields };
    chats.set(key, entry);
    renderContacts();
    askPresence();
  }
  return entry;
}

function userChat(user) {
  return chat(`user:${user}`, { user });
}

function groupChat(name, members) {
  return chat(`group:${name}`, { group: name, members: [...new Set([...members, me])].sort() });
}

/** Who a send in chat `key` goes to: the other side and this user (for its other devices). */
function recipients(key) {
  const entry = chats.get(key);
  if (!entry) return [];
  return entry.group ? entry.members : [...new Set([entry.user, me])];
}

function select(key) {
  selected = key;
  const entry = chats.get(key);
  if (entry) entry.unread = 0;
  $('peer').textContent = entry.group ? `#${entry.group} (${entry.members.join(', ')})` : entry.user;
  $('text').disabled = false;
  $('compose').querySelector('button').disabled = false;
  showTyping('');
  renderContacts();
  renderMessages();
}

function renderContacts() {
  const list = $('contacts');
  list.replaceChildren();
  for (const [key, entry] of chats) {
    const item = document.createElement('li');
    if (entry.group) {
      item.dataset.group = entry.group;
      item.append(entry.group);
    } else {
      item.dataset.user = entry.user;
      item.dataset.online = String(entry.online);
      item.title = entry.online ? 'online' : 'offline';
      item.append(entry.user);
    }
    item.setAttribute('aria-current', String(key === selected));
    if (entry.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(entry.unread);
      item.append(badge);
    }
    item.addEventListener('click', () => select(key));
    list.append(item);
  }
}

function renderMessages() {
  const list = $('messages');
  list.replaceChildren();
  for (const entry of chats.get(selected)?.messages ?? []) {
    const item = document.createElement('li');
    item.dataset.from = entry.from;
    item.dataset.state = entry.state;
    if (entry.from !== me && chats.get(selected)?.group) {
      const author = document.createElement('span');
      author.className = 'author';
      author.textContent = entry.from;
      item.append(author);
    }
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

function showTyping(user) {
  clearTimeout(typingTimer);
  const line = $('typing');
  line.dataset.user = user;
  line.textContent = user ? `${user} is typing…` : '';
  if (user) typingTimer = setTimeout(() => showTyping(''), TYPING_SHOWN_MS);
}

function askPresence() {
  if (!client || client.state !== 'open') return;
  const users = [...chats.values()].filter((entry) => entry.user).map((entry) => entry.user).slice(0, 100);
  if (users.length === 0) return;
  client.presence(users).then(
    (online) => {
      for (const [user, isOnline] of Object.entries(online)) {
        const entry = chats.get(`user:${user}`);
        if (entry) entry.online = isOnline;
      }
      renderContacts();
    },
    () => {}, // asked again at the next tick
  );
}

function received(message) {
  const body = message.body;
  const fields = typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {};
  // This device's own copy: it shows the message already.
  if (message.from === me && typeof fields.cid === 'string' && sent.has(fields.cid)) return;
  let key;
  if (typeof fields.group === 'string' && Array.isArray(fields.members)) {
    groupChat(fields.group, fields.members);
    key = `group:${fields.group}`;
  } else if (message.from === me && typeof fields.peer === 'string') {
    // Sent by another device of this user.
    userChat(fields.peer);
    key = `user:${fields.peer}`;
  } else {
    userChat(message.from);
    key = `user:${message.from}`;
  }
  const text = typeof body === 'string' ? body : typeof fields.text === 'string' ? fields.text : JSON.stringify(body);
  const entry = chats.get(key);
  entry.messages.push({ from: message.from, text, state: message.from === me ? 'accepted' : 'delivered' });
  if ($('typing').dataset.user === message.from) showTyping('');
  if (!selected) select(key);
  else if (key === selected) renderMessages();
  else {
    entry.unread += 1;
    renderContacts();
  }
}

function logIn(user) {
  me = user;
  // sessionStorage: this tab's device id and outbox, which a reload keeps.
  client = new SwitchboardClient({ url: websocketUrl(), user, storage: sessionStorage, reconnect: { maxDelayMs: 5000 } });
  client.on('state', (state) => {
    if (state === 'connecting') showStatus(state, `${me} · connecting…`);
  });
  client.on('welcome', (welcome) => {
    showStatus('open', `${welcome.user} · device ${welcome.device} · connected to node ${welcome.node}`);
    $('status').dataset.node = welcome.node;
    $('status').dataset.device = welcome.device ?? '';
    askPresence();
  });
  client.on('disconnect', (event) => {
    const when = event.delayMs === null ? 'when shown again' : `in ${(event.delayMs / 1000).toFixed(1)}s`;
    showStatus('waiting', `${me} · disconnected (${event.code} ${event.reason}), retrying ${when}`);
  });
  client.on('disconnected', (event) => showStatus('closed', `${me} · disconnected by the server (${event.reason})`));
  client.on('message', received);
  client.on('typing', (event) => {
    const entry = chats.get(selected);
    if (!entry || event.from === me) return;
    if (entry.user === event.from || entry.members?.includes(event.from)) showTyping(event.from);
  });
  client.on('receipt', (receipt) => {
    // The first of the recipients to ack it, not this user's own devices.
    if (receipt.user === me) return;
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
  chats.clear();
  sent.clear();
  selected = '';
  $('peer').textContent = 'Pick a contact';
  showTyping('');
  renderContacts();
  renderMessages();
  showStatus('idle', 'not logged in');
  $('login').hidden = false;
  $('chat').hidden = true;
  $('logout').hidden = true;
}

function send(text) {
  // The send id names the message here too: its receipt carries it, and
  // this device knows its own copy by it.
  const id = `demo-${Date.now().toString(36)}-${++sequence}`;
  const entry = { from: me, text, state: 'pending' };
  const target = chats.get(selected);
  const body = target.group ? { text, cid: id, group: target.group, members: target.members } : { text, cid: id, peer: target.user };
  sent.set(id, entry);
  target.messages.push(entry);
  renderMessages();
  client.send(recipients(selected), body, { id }).then(
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
  userChat(user);
  select(`user:${user}`);
});

$('add-group').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('group-name').value.trim();
  const members = $('group-members').value.split(',').map((member) => member.trim()).filter(Boolean);
  $('group-name').value = '';
  $('group-members').value = '';
  groupChat(name, members);
  select(`group:${name}`);
});

$('text').addEventListener('input', () => {
  if (!client || !selected) return;
  const others = recipients(selected).filter((user) => user !== me);
  if (others.length > 0) client.typing(others);
});

$('compose').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value;
  $('text').value = '';
  send(text);
});
