// The two transports over stand-ins for the platform APIs: where the token
// goes, what reaches the client, and that a connection reports its end once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  type TransportEvents,
  type WebSocketConstructor,
  type WxSocketApi,
  type WxSocketTask,
  browserTransport,
  withQuery,
  wxTransport,
} from '../../src/transports.js';

const REQUEST = { url: 'wss://chat.example/ws', protocol: 'switchboard.v1.json' };

/** What a transport reported, in order. */
function recorder(): TransportEvents & { seen: string[] } {
  const seen: string[] = [];
  return {
    seen,
    message: (text) => seen.push(`message ${text}`),
    close: (code, reason) => seen.push(`close ${code} ${reason}`),
  };
}

/** The handlers a `WebSocket` user sets, called by the test as the browser would. */
class StandInWebSocket {
  static opened: StandInWebSocket[] = [];
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  readonly sent: string[] = [];
  closed: unknown[] | undefined;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {
    StandInWebSocket.opened.push(this);
  }

  send(text: string): void {
    this.sent.push(text);
  }

  close(...args: unknown[]): void {
    this.closed = args;
  }
}

function openBrowser(token?: string) {
  StandInWebSocket.opened = [];
  const events = recorder();
  const factory = browserTransport(StandInWebSocket as unknown as WebSocketConstructor);
  const transport = factory({ ...REQUEST, token }, events);
  const socket = StandInWebSocket.opened[0];
  assert.ok(socket);
  return { transport, socket, events };
}

test('withQuery adds a parameter to a URL with or without a query, and drops a fragment', () => {
  assert.equal(withQuery('ws://h/ws', 'user', 'alice'), 'ws://h/ws?user=alice');
  assert.equal(withQuery('ws://h/ws?user=alice', 'token', 'a b&c'), 'ws://h/ws?user=alice&token=a%20b%26c');
  assert.equal(withQuery('ws://h/ws#x', 'user', 'alice'), 'ws://h/ws?user=alice');
});

test('browser: the token travels in ?token=, the subprotocol is offered, text frames reach the client', () => {
  const { transport, socket, events } = openBrowser('jwt.value');
  assert.equal(socket.url, 'wss://chat.example/ws?token=jwt.value');
  assert.deepEqual(socket.protocols, ['switchboard.v1.json']);
  socket.onmessage?.({ data: '{"type":"pong"}' });
  socket.onmessage?.({ data: new ArrayBuffer(2) });
  transport.send('{"type":"ping"}');
  assert.deepEqual(socket.sent, ['{"type":"ping"}']);
  socket.onclose?.({ code: 1012, reason: 'node restarting' });
  assert.deepEqual(events.seen, ['message {"type":"pong"}', 'close 1012 node restarting']);
});

test('browser: without a token the URL is left as it is', () => {
  const { socket } = openBrowser();
  assert.equal(socket.url, 'wss://chat.example/ws');
});

test('browser: an error reports 1006 once, even when a close event follows', () => {
  const { socket, events } = openBrowser('t');
  socket.onerror?.();
  socket.onclose?.({ code: 1006, reason: '' });
  assert.deepEqual(events.seen, ['close 1006 connection failed']);
});

test('browser: after the client closes, nothing more is reported', () => {
  const { transport, socket, events } = openBrowser('t');
  transport.close(1000, 'client closed');
  assert.deepEqual(socket.closed, [1000, 'client closed']);
  socket.onmessage?.({ data: '{"type":"pong"}' });
  socket.onclose?.({ code: 1000, reason: 'client closed' });
  assert.deepEqual(events.seen, []);
});

/** A `wx` whose socket task keeps the callbacks it was given. */
function standInWx() {
  const calls: Parameters<WxSocketApi['connectSocket']>[0][] = [];
  const task = {
    sent: [] as string[],
    closed: [] as unknown[],
    sendFails: false,
    message: undefined as ((result: { data: string | ArrayBuffer }) => void) | undefined,
    close: undefined as ((result: { code: number; reason: string }) => void) | undefined,
    error: undefined as ((result: { errMsg: string }) => void) | undefined,
  };
  const socketTask: WxSocketTask = {
    send: ({ data, fail }) => (task.sendFails ? fail?.({ errMsg: 'sendSocketMessage:fail' }) : task.sent.push(data)),
    close: (options) => task.closed.push(options),
    onMessage: (callback) => (task.message = callback),
    onClose: (callback) => (task.close = callback),
    onError: (callback) => (task.error = callback),
  };
  const wx: WxSocketApi = {
    connectSocket(options) {
      calls.push(options);
      return socketTask;
    },
  };
  return { wx, calls, task };
}

test('wx: the token travels in the Authorization header, never in the URL', () => {
  const { wx, calls, task } = standInWx();
  const events = recorder();
  const transport = wxTransport(wx)({ ...REQUEST, token: 'jwt.value' }, events);
  assert.equal(calls.length, 1);
  const [options] = calls;
  assert.equal(options?.url, 'wss://chat.example/ws');
  assert.deepEqual(options?.header, { Authorization: 'Bearer jwt.value' });
  assert.deepEqual(options?.protocols, ['switchboard.v1.json']);
  task.message?.({ data: '{"type":"pong"}' });
  transport.send('{"type":"ping"}');
  assert.deepEqual(task.sent, ['{"type":"ping"}']);
  task.close?.({ code: 1013, reason: 'slow consumer' });
  assert.deepEqual(events.seen, ['message {"type":"pong"}', 'close 1013 slow consumer']);
});

test('wx: an error, a failed connect or a failed write reports 1006 once and closes the task', () => {
  for (const fail of ['error', 'connect', 'send'] as const) {
    const { wx, calls, task } = standInWx();
    const events = recorder();
    const transport = wxTransport(wx)({ ...REQUEST }, events);
    assert.deepEqual(calls[0]?.header, {});
    if (fail === 'error') task.error?.({ errMsg: 'network down' });
    if (fail === 'connect') calls[0]?.fail?.({ errMsg: 'network down' });
    if (fail === 'send') {
      task.sendFails = true;
      transport.send('{"type":"ping"}');
    }
    task.close?.({ code: 1006, reason: '' });
    const reason = fail === 'send' ? 'sendSocketMessage:fail' : 'network down';
    assert.deepEqual(events.seen, [`close 1006 ${reason}`], fail);
    assert.deepEqual(task.closed, [{}], fail);
  }
});

test('wx: after the client closes, nothing more is reported', () => {
  const { wx, task } = standInWx();
  const events = recorder();
  const transport = wxTransport(wx)({ ...REQUEST, token: 't' }, events);
  transport.close(1000, 'client closed');
  assert.deepEqual(task.closed, [{ code: 1000, reason: 'client closed' }]);
  task.message?.({ data: '{"type":"pong"}' });
  task.close?.({ code: 1000, reason: 'client closed' });
  assert.deepEqual(events.seen, []);
});
