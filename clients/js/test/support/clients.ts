// Client-side support for the tests against real nodes: waiting for a
// client's events with a deadline, a wire that records every frame and can
// lose chosen ones or cut the connection, HS256 tokens, and a mini-program
// `wx` over Node's WebSocket.

import { createHmac } from 'node:crypto';

import type { ClientEvents, SwitchboardClient } from '../../src/client.js';
import type { ClientFrame, ServerFrame } from '../../src/protocol.js';
import { type TransportFactory, type WxSocketApi, browserTransport } from '../../src/transports.js';
import { within } from './servers.js';

const WAIT_MS = 15_000;

/** The next `type` event of `client` that `accepts`, within a deadline. */
export function waitFor<K extends keyof ClientEvents>(
  client: SwitchboardClient,
  type: K,
  what: string,
  accepts: (event: ClientEvents[K]) => boolean = () => true,
): Promise<ClientEvents[K]> {
  let off = () => {};
  const event = new Promise<ClientEvents[K]>((resolve) => {
    off = client.on(type, (value) => {
      if (accepts(value)) resolve(value);
    });
  });
  return within(what, WAIT_MS, event).finally(off);
}

/** Resolves once `holds()`: at once, or at the first `type` event of `client` after which it does. */
export function waitUntil<K extends keyof ClientEvents>(
  client: SwitchboardClient,
  type: K,
  what: string,
  holds: () => boolean,
): Promise<void> {
  if (holds()) return Promise.resolve();
  return waitFor(client, type, what, holds).then(() => undefined);
}

/** Every `type` event of `client` from now on. */
export function record<K extends keyof ClientEvents>(client: SwitchboardClient, type: K): ClientEvents[K][] {
  const events: ClientEvents[K][] = [];
  client.on(type, (event) => events.push(event));
  return events;
}

/** What crossed one connection, both ways, decoded. */
export interface Traffic {
  received: ServerFrame[];
  written: ClientFrame[];
}

/**
 * A transport around a real one that records the frames of each
 * connection, and loses those a test chooses: as a network would, the
 * server sees what the client wrote (or not) and the client sees what the
 * server wrote (or not).
 */
export class Wire {
  readonly connections: Traffic[] = [];
  /** Frames from the server that never reach the client. */
  loseReceived: ((frame: ServerFrame) => boolean) | undefined;
  /** Frames from the client that never reach the server. */
  loseWritten: ((frame: ClientFrame) => boolean) | undefined;
  private cut: (() => void) | undefined;
  private readonly watchers = new Set<(frame: ServerFrame) => void>();
  private readonly writeWatchers = new Set<(frame: ClientFrame) => void>();

  constructor(private readonly inner: TransportFactory = browserTransport()) {}

  readonly transport: TransportFactory = (request, events) => {
    const traffic: Traffic = { received: [], written: [] };
    this.connections.push(traffic);
    const socket = this.inner(request, {
      message: (text) => {
        if (typeof text !== 'string') throw new Error('the Wire reads JSON connections only');
        const frame = JSON.parse(text) as ServerFrame;
        traffic.received.push(frame);
        for (const watcher of this.watchers) watcher(frame);
        if (!this.loseReceived?.(frame)) events.message(text);
      },
      close: (code, reason) => events.close(code, reason),
    });
    this.cut = () => {
      socket.close(1000, 'cut');
      events.close(1006, 'cut by the test');
    };
    return {
      send: (text) => {
        if (typeof text !== 'string') throw new Error('the Wire reads JSON connections only');
        const frame = JSON.parse(text) as ClientFrame;
        traffic.written.push(frame);
        for (const watcher of this.writeWatchers) watcher(frame);
        if (!this.loseWritten?.(frame)) socket.send(text);
      },
      close: (code, reason) => socket.close(code, reason),
    };
  };

  /** The next frame from the server, on any connection, that `accepts`. */
  received<T extends ServerFrame>(what: string, accepts: (frame: ServerFrame) => frame is T): Promise<T> {
    let watcher: (frame: ServerFrame) => void = () => {};
    const frame = new Promise<T>((resolve) => {
      watcher = (received) => {
        if (accepts(received)) resolve(received);
      };
      this.watchers.add(watcher);
    });
    return within(what, WAIT_MS, frame).finally(() => this.watchers.delete(watcher));
  }

  /** The next frame the client writes, on any connection, that `accepts` (lost or not). */
  written<T extends ClientFrame>(what: string, accepts: (frame: ClientFrame) => frame is T): Promise<T> {
    let watcher: (frame: ClientFrame) => void = () => {};
    const frame = new Promise<T>((resolve) => {
      watcher = (written) => {
        if (accepts(written)) resolve(written);
      };
      this.writeWatchers.add(watcher);
    });
    return within(what, WAIT_MS, frame).finally(() => this.writeWatchers.delete(watcher));
  }

  /** The current connection fails, as when the network goes: the client sees 1006. */
  cutConnection(): void {
    this.cut?.();
  }
}

/** An HS256 JWT for `sub`, expiring `expiresIn` seconds from now (negative: already expired). */
export function signToken(secret: string, sub: string, expiresIn: number): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + expiresIn })}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/**
 * A mini-program `wx` over Node's WebSocket, which, unlike a browser's,
 * can set request headers: the mini-program transport runs against a real
 * node with the token in `Authorization`.
 */
export function nodeWx(): WxSocketApi {
  return {
    connectSocket({ url, header, protocols }) {
      const options = { protocols, headers: header };
      const socket = new WebSocket(url, options as unknown as string[]);
      return {
        send: ({ data }) => socket.send(data),
        close: ({ code, reason }) => socket.close(code, reason),
        onMessage: (callback) => socket.addEventListener('message', (event) => callback({ data: event.data })),
        onClose: (callback) => socket.addEventListener('close', (event) => callback(event)),
        onError: (callback) => socket.addEventListener('error', () => callback({ errMsg: 'connection failed' })),
      };
    },
  };
}
