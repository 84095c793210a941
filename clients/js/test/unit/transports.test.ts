// The transports over stand-ins for the platform APIs (browser WebSocket,
// wx, uni, Taro): where the token goes, what reaches the client, and that a
// connection reports its end once; and the mini-program storage.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  type SocketOptions,
  type SocketTask,
  type TransportEvents,
  type TransportFactory,
  type WebSocketConstructor,
  browserTransport,
  miniProgramStorage,
  taroTransport,
  uniTransport,
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
  binaryType = 'blob';
  readonly sent: unknown[] = [];
  closed: unknown[] | undefined;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {
    StandInWebSocket.opened.push(this);
  }

  send(data: unknown): void {
    this.sent.push(data);
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

test('browser: the token travels in the subprotocol list, never in the URL; text and binary frames reach the client', () => {
  const { transport, socket, events } = openBrowser('jwt.value');
  assert.equal(socket.url, 'wss://chat.example/ws');
  assert.deepEqual(socket.protocols, ['switchboard.v1.json', 'switchboard.token.jwt.value']);
  assert.equal(socket.binaryType, 'arraybuffer');
  const binary = new ArrayBuffer(2);
  socket.onmessage?.({ data: '{"type":"pong"}' });
  socket.onmessage?.({ data: binary });
  socket.onmessage?.({ data: 42 });
  transport.send('{"type":"ping"}');
  transport.send(new Uint8Array([0x81]));
  assert.deepEqual(socket.sent, ['{"type":"ping"}', new Uint8Array([0x81])]);
  socket.onclose?.({ code: 1012, reason: 'node restarting' });
  assert.deepEqual(events.seen, ['message {"type":"pong"}', `message ${String(binary)}`, 'close 1012 node restarting']);
});

test('browser: without a token only the codec protocol is offered', () => {
  const { socket } = openBrowser();
  assert.equal(socket.url, 'wss://chat.example/ws');
  assert.deepEqual(socket.protocols, ['switchboard.v1.json']);
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

/** A socket task that keeps the callbacks it was given. */
function standInTask() {
  const task = {
    sent: [] as unknown[],
    closed: [] as unknown[],
    sendFails: false,
    message: undefined as ((result: { data: string | ArrayBuffer }) => void) | undefined,
    close: undefined as ((result: { code: number; reason: string }) => void) | undefined,
    error: undefined as ((result: { errMsg: string }) => void) | undefined,
  };
  const socketTask: SocketTask = {
    send: ({ data, fail }) => (task.sendFails ? fail?.({ errMsg: 'sendSocketMessage:fail' }) : task.sent.push(data)),
    close: (options) => task.closed.push(options),
    onMessage: (callback) => (task.message = callback),
    onClose: (callback) => (task.close = callback),
    onError: (callback) => (task.error = callback),
  };
  return { task, socketTask };
}

/**
 * A platform (`wx`, `uni` or `Taro`) over a stand-in task, and its
 * transport. Taro answers `connectSocket` with a promise of the task;
 * `ready` resolves once the transport has it.
 */
function standIn(platform: 'wx' | 'uni' | 'taro') {
  const calls: SocketOptions[] = [];
  const { task, socketTask } = standInTask();
  const connectSocket = (options: SocketOptions) => {
    calls.push(options);
    return socketTask;
  };
  let factory: TransportFactory;
  let ready: Promise<unknown> = Promise.resolve();
  if (platform === 'taro') {
    factory = taroTransport({
      connectSocket(options) {
        const promised = Promise.resolve(connectSocket(options));
        ready = promised.then(() => undefined);
        return promised;
      },
    });
  } else {
    factory = (platform === 'wx' ? wxTransport : uniTransport)({ connectSocket });
  }
  return { factory, calls, task, ready: () => ready };
}

for (const platform of ['wx', 'uni', 'taro'] as const) {
  test(`${platform}: the token travels in the Authorization header, never in the URL; binary frames as ArrayBuffers`, async () => {
    const { factory, calls, task, ready } = standIn(platform);
    const events = recorder();
    const transport = factory({ ...REQUEST, token: 'jwt.value' }, events);
    await ready();
    assert.equal(calls.length, 1);
    const [options] = calls;
    assert.equal(options?.url, 'wss://chat.example/ws');
    assert.deepEqual(options?.header, { Authorization: 'Bearer jwt.value' });
    assert.deepEqual(options?.protocols, ['switchboard.v1.json']);
    // uni-app returns a task only to a call with a callback.
    assert.equal(typeof options?.fail, 'function');
    task.message?.({ data: '{"type":"pong"}' });
    transport.send('{"type":"ping"}');
    transport.send(new Uint8Array([1, 2, 3]).subarray(1));
    assert.equal(task.sent[0], '{"type":"ping"}');
    assert.ok(task.sent[1] instanceof ArrayBuffer);
    assert.deepEqual([...new Uint8Array(task.sent[1] as ArrayBuffer)], [2, 3]);
    task.close?.({ code: 1013, reason: 'slow consumer' });
    assert.deepEqual(events.seen, ['message {"type":"pong"}', 'close 1013 slow consumer']);
  });

  test(`${platform}: an error, a failed connect or a failed write reports 1006 once and closes the task`, async () => {
    for (const fail of ['error', 'connect', 'send'] as const) {
      const { factory, calls, task, ready } = standIn(platform);
      const events = recorder();
      const transport = factory({ ...REQUEST }, events);
      await ready();
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

  test(`${platform}: after the client closes, nothing more is reported`, async () => {
    const { factory, task, ready } = standIn(platform);
    const events = recorder();
    const transport = factory({ ...REQUEST, token: 't' }, events);
    await ready();
    transport.close(1000, 'client closed');
    assert.deepEqual(task.closed, [{ code: 1000, reason: 'client closed' }]);
    task.message?.({ data: '{"type":"pong"}' });
    task.close?.({ code: 1000, reason: 'client closed' });
    assert.deepEqual(events.seen, []);
  });
}

test('taro: a close before the promised task came closes the task when it comes', async () => {
  const { factory, task, ready } = standIn('taro');
  const events = recorder();
  const transport = factory({ ...REQUEST }, events);
  transport.close(1000, 'client closed');
  assert.deepEqual(task.closed, []);
  await ready();
  await Promise.resolve();
  assert.deepEqual(task.closed, [{ code: 1000, reason: 'client closed' }]);
  assert.equal(task.message, undefined, 'no listener on a task closed at once');
  assert.deepEqual(events.seen, []);
});

test('taro: a connectSocket promise that rejects reports 1006', async () => {
  const events = recorder();
  taroTransport({ connectSocket: () => Promise.reject(new Error('no network')) })({ ...REQUEST }, events);
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(events.seen, ['close 1006 Error: no network']);
});

test('mini-program storage: reads with getStorageSync, writes the device id with setStorageSync, the rest with setStorage', () => {
  const calls: string[] = [];
  const items = new Map<string, string>([['a', '1']]);
  const storage = miniProgramStorage({
    getStorageSync: (key) => items.get(key) ?? '',
    setStorageSync: (key, data) => calls.push(`sync ${key}=${data}`),
    setStorage: ({ key, data }) => calls.push(`async ${key}=${data}`),
  });
  assert.equal(storage.getItem('a'), '1');
  assert.equal(storage.getItem('missing'), null, 'wx answers an empty string for a missing key');
  storage.setItem('switchboard.device', 'd-1');
  storage.setItemLater?.('switchboard.outbox', '[]');
  assert.deepEqual(calls, ['sync switchboard.device=d-1', 'async switchboard.outbox=[]']);
});
