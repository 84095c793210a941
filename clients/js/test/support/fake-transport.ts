// A transport with no socket under it: the test plays the server, writing
// frames to the client and reading what the client wrote, one connection
// per attempt. Also a storage in memory, which outlives the clients that
// use it as a mini-program's storage outlives a killed app.

import type { TestContext } from 'node:test';

import { decode, encode } from '@msgpack/msgpack';

import { type ClientOptions, SwitchboardClient } from '../../src/client.js';
import type { ClientFrame, ServerFrame } from '../../src/protocol.js';
import type { ConnectRequest, Transport, TransportEvents, TransportFactory } from '../../src/transports.js';

export class FakeConnection implements Transport {
  /** What the client wrote, decoded. */
  readonly written: ClientFrame[] = [];
  /** Set when the client closed this connection. */
  closedByClient: { code: number; reason: string } | undefined;

  constructor(
    readonly request: ConnectRequest,
    private readonly events: TransportEvents,
  ) {}

  /** Whether the client wrote binary (MessagePack) frames. */
  binary = false;

  send(data: string | Uint8Array): void {
    if (typeof data === 'string') {
      this.written.push(JSON.parse(data) as ClientFrame);
    } else {
      this.binary = true;
      this.written.push(decode(data) as ClientFrame);
    }
  }

  close(code: number, reason: string): void {
    this.closedByClient = { code, reason };
  }

  /** The frames of one type the client wrote. */
  writtenOf<T extends ClientFrame['type']>(type: T): Extract<ClientFrame, { type: T }>[] {
    return this.written.filter((frame): frame is Extract<ClientFrame, { type: T }> => frame.type === type);
  }

  /** Writes a frame to the client. */
  frame(frame: ServerFrame | Record<string, unknown>): void {
    this.text(JSON.stringify(frame));
  }

  /** Writes a text frame to the client, whatever it holds. */
  text(text: string): void {
    this.events.message(text);
  }

  /** Writes a binary (MessagePack) frame to the client. */
  binaryFrame(frame: ServerFrame | Record<string, unknown>): void {
    const bytes = encode(frame);
    this.events.message(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
  }

  welcome(
    fields: { user?: string; epoch?: string; heartbeat_ms?: number; node?: string; seq?: number; exp?: number } = {},
  ): void {
    this.frame({
      type: 'welcome',
      user: fields.user ?? 'alice',
      conn: '01900000-0000-7000-8000-000000000001',
      node: fields.node ?? 'n1',
      heartbeat_ms: fields.heartbeat_ms ?? 25_000,
      epoch: fields.epoch ?? '01900000-0000-7000-8000-0000000000e1',
      device: 'd1',
      seq: fields.seq ?? 0,
      ...(fields.exp === undefined ? {} : { exp: fields.exp }),
    });
  }

  /** Set when the server closed this connection, or it failed. */
  closedByServer = false;

  /** Whether neither side has closed this connection. */
  get open(): boolean {
    return !this.closedByServer && this.closedByClient === undefined;
  }

  /** The server closes the connection (or it fails, with 1006). */
  serverClose(code: number, reason = ''): void {
    this.closedByServer = true;
    this.events.close(code, reason);
  }
}

export class FakeServer {
  readonly connections: FakeConnection[] = [];
  private waiting: ((connection: FakeConnection) => void)[] = [];

  readonly transport: TransportFactory = (request, events) => {
    const connection = new FakeConnection(request, events);
    this.connections.push(connection);
    for (const resolve of this.waiting.splice(0)) resolve(connection);
    return connection;
  };

  /** The next connection the client opens. */
  nextConnection(): Promise<FakeConnection> {
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** The latest connection the client opened. */
  get last(): FakeConnection {
    const connection = this.connections.at(-1);
    if (!connection) throw new Error('the client opened no connection');
    return connection;
  }
}

/** A `ClientStorage` in memory, with every write recorded. */
export class MemoryStorage {
  readonly items = new Map<string, string>();
  readonly writes: string[] = [];

  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }

  setItem(key: string, value: string): void {
    this.writes.push(key);
    this.items.set(key, value);
  }

  /** What is stored under `key`, parsed. */
  json(key: string): unknown {
    const text = this.items.get(key);
    return text === undefined ? undefined : JSON.parse(text);
  }
}

/** Alice's client (device `d1`, no storage, no app lifecycle) over `server`, closed after the test. */
export function fakeClient(t: TestContext, server: FakeServer, options: Partial<ClientOptions> = {}): SwitchboardClient {
  const client = new SwitchboardClient({
    url: 'ws://n1/ws',
    user: 'alice',
    device: 'd1',
    storage: null,
    app: null,
    transport: server.transport,
    ...options,
  });
  t.after(() => client.close());
  return client;
}

/** Lets pending promise callbacks run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
