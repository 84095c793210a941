// How the client reaches a socket, where it keeps what must survive a
// restart, and how it hears about the app's lifecycle. The client speaks
// only to these interfaces, so one client runs in a browser and in a
// mini-program (WeChat, uni-app, Taro) alike, and a test can hand it fakes.
//
// The platforms differ in how they carry the token: a browser cannot set
// headers on a WebSocket, so it goes in the subprotocol list
// (`switchboard.token.<JWT>`, never in the URL); a mini-program sets
// `Authorization: Bearer`.

import { CloseCode, TOKEN_SUBPROTOCOL_PREFIX } from './protocol.js';

/** What the client asks a transport to open. */
export interface ConnectRequest {
  /** The WebSocket URL, with `?device=` (and `?user=`, `?since=`) already added. */
  url: string;
  /** The JWT for this attempt, when the client has one. */
  token?: string;
  /** The codec's subprotocol to offer. */
  protocol: string;
}

/**
 * What a transport reports. `close` is called once per connection, whether
 * it was closed by the server, failed, or could not be opened, and never
 * after the client itself called `Transport.close`.
 */
export interface TransportEvents {
  /** A text frame (a string) or a binary one (an `ArrayBuffer`). */
  message(data: string | ArrayBuffer): void;
  close(code: number, reason: string): void;
}

/** One connection. */
export interface Transport {
  /** Writes a text frame (a string) or a binary one. A failed write is reported through `close`, never thrown. */
  send(data: string | Uint8Array): void;
  close(code: number, reason: string): void;
}

/** Opens a connection and reports what happens to it through `events`. */
export type TransportFactory = (request: ConnectRequest, events: TransportEvents) => Transport;

/**
 * `url` with `name=value` added to its query string, without a fragment
 * (a WebSocket URL has none). No `URL` class: mini-programs have none.
 */
export function withQuery(url: string, name: string, value: string): string {
  const hash = url.indexOf('#');
  const base = hash < 0 ? url : url.slice(0, hash);
  const separator = base.includes('?') ? '&' : '?';
  return `${base}${separator}${name}=${encodeURIComponent(value)}`;
}

/**
 * Guards a transport's reports: `close` reaches the client at most once,
 * and nothing does after the client closed the connection itself.
 */
function reporter(events: TransportEvents) {
  let done = false;
  return {
    message: (data: string | ArrayBuffer) => done || events.message(data),
    close(code: number, reason: string) {
      if (done) return;
      done = true;
      events.close(code, reason);
    },
    /** The client closed the connection: report nothing more. */
    silence() {
      done = true;
    },
  };
}

/** The constructor of a standard `WebSocket`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;

/**
 * The browser's `WebSocket` (also Node's, from version 22 or with
 * `--experimental-websocket`). The token travels in the subprotocol list,
 * beside the codec's protocol, so it appears in no URL; the server never
 * echoes it.
 */
export function browserTransport(WebSocketClass?: WebSocketConstructor): TransportFactory {
  return (request, events) => {
    const Socket = WebSocketClass ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Socket) throw new TypeError('no WebSocket here: pass a transport to the client');
    const protocols = [request.protocol];
    if (request.token !== undefined) protocols.push(TOKEN_SUBPROTOCOL_PREFIX + request.token);
    const report = reporter(events);
    const socket = new Socket(request.url, protocols);
    socket.binaryType = 'arraybuffer';
    socket.onmessage = (event: MessageEvent) => {
      if (typeof event.data === 'string' || event.data instanceof ArrayBuffer) report.message(event.data);
    };
    socket.onclose = (event: CloseEvent) => report.close(event.code, event.reason);
    // An error means the connection failed (1006). A browser follows it
    // with a close event; Node 20's WebSocket, when the upgrade is
    // refused, does not.
    socket.onerror = () => report.close(CloseCode.Abnormal, 'connection failed');
    return {
      send: (data) => socket.send(data),
      close(code, reason) {
        report.silence();
        socket.close(code, reason);
      },
    };
  };
}

/** The options of `connectSocket`, as WeChat, uni-app and Taro take them. */
export interface SocketOptions {
  url: string;
  header?: Record<string, string>;
  protocols?: string[];
  tcpNoDelay?: boolean;
  fail?: (result: { errMsg: string }) => void;
  complete?: () => void;
}

/** A mini-program's `SocketTask` (WeChat, uni-app and Taro have the same). */
export interface SocketTask {
  send(options: { data: string | ArrayBuffer; fail?: (result: { errMsg: string }) => void }): void;
  close(options: { code?: number; reason?: string }): void;
  onMessage(callback: (result: { data: string | ArrayBuffer }) => void): void;
  onClose(callback: (result: { code: number; reason: string }) => void): void;
  onError(callback: (result: { errMsg: string }) => void): void;
}

/** The part of a mini-program's `wx` (or `uni`) the transport uses. */
export interface WxSocketApi {
  connectSocket(options: SocketOptions): SocketTask;
}

/** The part of Taro the transport uses: its `connectSocket` answers a promise of the task. */
export interface TaroSocketApi {
  connectSocket(options: SocketOptions): Promise<SocketTask>;
}

/** A socket task's data: an `ArrayBuffer` for binary frames. */
function taskData(data: string | Uint8Array): string | ArrayBuffer {
  if (typeof data === 'string') return data;
  return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
}

/**
 * A transport over `connectSocket` of a mini-program framework, whose task
 * comes at once (WeChat, uni-app) or as a promise (Taro). The token travels
 * in the `Authorization` header.
 */
function socketTaskTransport(name: string, api: () => { connectSocket(options: SocketOptions): SocketTask | Promise<SocketTask> } | undefined): TransportFactory {
  return (request, events) => {
    const platform = api();
    if (!platform) throw new TypeError(`no ${name} here: pass the ${name} object to the transport`);
    const report = reporter(events);
    const header: Record<string, string> = {};
    if (request.token !== undefined) header.Authorization = `Bearer ${request.token}`;
    let task: SocketTask | undefined;
    /** Set when the client closed before a promised task came. */
    let closing: { code: number; reason: string } | undefined;
    // Called by the platform after connectSocket returned, never during it.
    function failed(result: { errMsg: string }) {
      report.close(CloseCode.Abnormal, result.errMsg);
      task?.close({});
    }
    function attach(socket: SocketTask) {
      task = socket;
      if (closing) {
        socket.close(closing);
        return;
      }
      socket.onMessage((result) => report.message(result.data));
      socket.onClose((result) => report.close(result.code, result.reason));
      socket.onError(failed);
    }
    // `fail` (and, for uni-app, any callback at all) makes connectSocket
    // return the task rather than a promise of nothing.
    const opened = platform.connectSocket({
      url: request.url,
      header,
      protocols: [request.protocol],
      tcpNoDelay: true,
      fail: failed,
      complete: () => undefined,
    });
    if (opened instanceof Promise) opened.then(attach, (error: unknown) => failed({ errMsg: String(error) }));
    else attach(opened);
    return {
      // A write that fails leaves the connection unusable: the client
      // reconnects and writes again what is still unanswered. Nothing is
      // written before the server's welcome, so a promised task is there.
      send: (data) => task?.send({ data: taskData(data), fail: failed }),
      close(code, reason) {
        report.silence();
        if (task) task.close({ code, reason });
        else closing = { code, reason };
      },
    };
  };
}

/** A WeChat mini-program's socket task (`wx.connectSocket`). Pass `wx`; it defaults to the global one. */
export function wxTransport(wxApi?: WxSocketApi): TransportFactory {
  return socketTaskTransport('wx', () => wxApi ?? (globalThis as { wx?: WxSocketApi }).wx);
}

/** A uni-app socket task (`uni.connectSocket`). Pass `uni`; it defaults to the global one. */
export function uniTransport(uniApi?: WxSocketApi): TransportFactory {
  return socketTaskTransport('uni', () => uniApi ?? (globalThis as { uni?: WxSocketApi }).uni);
}

/** A Taro socket task (`Taro.connectSocket`, which answers a promise). Pass the `Taro` object. */
export function taroTransport(taroApi: TaroSocketApi): TransportFactory {
  return socketTaskTransport('Taro', () => taroApi);
}

/** The browser transport where there is a global `WebSocket`, else the WeChat one. */
export function defaultTransport(): TransportFactory {
  if (miniProgram() !== undefined) return wxTransport(miniProgram());
  return browserTransport();
}

/** The global `wx` of a mini-program, where there is no `WebSocket`. */
function miniProgram(): (WxSocketApi & AppLifecycle & MiniProgramStorageApi) | undefined {
  const scope = globalThis as { WebSocket?: unknown; wx?: WxSocketApi & AppLifecycle & MiniProgramStorageApi };
  return scope.WebSocket === undefined ? scope.wx : undefined;
}

/**
 * Where the client keeps what must outlive it: the device id, the seq
 * each user's messages were processed up to, and the unanswered sends.
 * `localStorage` is one.
 */
export interface ClientStorage {
  getItem(key: string): string | null | undefined;
  /** Writes before returning (the device id). */
  setItem(key: string, value: string): void;
  /** Writes in the background where the platform can (the outbox, the seqs); default: `setItem`. */
  setItemLater?(key: string, value: string): void;
}

/** The storage calls of `wx`, `uni` and `Taro`. */
export interface MiniProgramStorageApi {
  getStorageSync(key: string): unknown;
  setStorageSync(key: string, data: string): void;
  setStorage(options: { key: string; data: string }): void;
}

/**
 * A mini-program's storage (`wx`, `uni` or `Taro`): the device id with
 * `setStorageSync`, everything written often with `setStorage`, which
 * does not block the app.
 */
export function miniProgramStorage(api: MiniProgramStorageApi): ClientStorage {
  return {
    getItem(key) {
      const value = api.getStorageSync(key);
      return typeof value === 'string' && value !== '' ? value : null;
    },
    setItem: (key, value) => api.setStorageSync(key, value),
    setItemLater: (key, value) => api.setStorage({ key, data: value }),
  };
}

/** `localStorage` where there is one, a mini-program's storage where there is `wx`, else none. */
export function defaultStorage(): ClientStorage | undefined {
  try {
    const local = (globalThis as { localStorage?: ClientStorage }).localStorage;
    if (local) return local;
  } catch {
    // Access to localStorage throws where it is forbidden (sandboxed frames).
  }
  const wx = miniProgram();
  return wx ? miniProgramStorage(wx) : undefined;
}

/**
 * The app lifecycle of a mini-program, as `wx`, `uni` and `Taro` report
 * it: shown (foreground), hidden (background), network changes.
 */
export interface AppLifecycle {
  onAppShow(callback: () => void): void;
  onAppHide(callback: () => void): void;
  onNetworkStatusChange?(callback: (result: { isConnected: boolean }) => void): void;
  offAppShow?(callback: () => void): void;
  offAppHide?(callback: () => void): void;
  offNetworkStatusChange?(callback: (result: { isConnected: boolean }) => void): void;
}

/** The global `wx` in a mini-program, else none. */
export function defaultLifecycle(): AppLifecycle | undefined {
  return miniProgram();
}
