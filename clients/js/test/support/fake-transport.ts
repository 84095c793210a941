// A transport with no socket under it: the test plays the server, writing
// frames to the client and reading what the client wrote, one connection
// per attempt.

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

  send(text: string): void {
    this.written.push(JSON.parse(text) as ClientFrame);
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

  welcome(fields: { user?: string; epoch?: string; heartbeat_ms?: number; node?: string } = {}): void {
    this.frame({
      type: 'welcome',
      user: fields.user ?? 'alice',
      conn: '01900000-0000-7000-8000-000000000001',
      node: fields.node ?? 'n1',
      heartbeat_ms: fields.heartbeat_ms ?? 25_000,
      epoch: fields.epoch ?? '01900000-0000-7000-8000-0000000000e1',
    });
  }

  /** The server closes the connection (or it fails, with 1006). */
  serverClose(code: number, reason = ''): void {
    this.events.close(code, reason);
  }
}

export class FakeServer {
  readonly connections: FakeConnection[] = [];

  readonly transport: TransportFactory = (request, events) => {
    const connection = new FakeConnection(request, events);
    this.connections.push(connection);
    return connection;
  };

  /** The latest connection the client opened. */
  get last(): FakeConnection {
    const connection = this.connections.at(-1);
    if (!connection) throw new Error('the client opened no connection');
    return connection;
  }
}
