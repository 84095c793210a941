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
export declare function withQuery(url: string, name: string, value: string): string;
/** The constructor of a standard `WebSocket`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocket;
/**
 * The browser's `WebSocket` (also Node's, from version 22 or with
 * `--experimental-websocket`). The token travels in the subprotocol list,
 * beside the codec's protocol, so it appears in no URL; the server never
 * echoes it.
 */
export declare function browserTransport(WebSocketClass?: WebSocketConstructor): TransportFactory;
/** The options of `connectSocket`, as WeChat, uni-app and Taro take them. */
export interface SocketOptions {
    url: string;
    header?: Record<string, string>;
    protocols?: string[];
    tcpNoDelay?: boolean;
    fail?: (result: {
        errMsg: string;
    }) => void;
    complete?: () => void;
}
/** A mini-program's `SocketTask` (WeChat, uni-app and Taro have the same). */
export interface SocketTask {
    send(options: {
        data: string | ArrayBuffer;
        fail?: (result: {
            errMsg: string;
        }) => void;
    }): void;
    close(options: {
        code?: number;
        reason?: string;
    }): void;
    onMessage(callback: (result: {
        data: string | ArrayBuffer;
    }) => void): void;
    onClose(callback: (result: {
        code: number;
        reason: string;
    }) => void): void;
    onError(callback: (result: {
        errMsg: string;
    }) => void): void;
}
/** The part of a mini-program's `wx` (or `uni`) the transport uses. */
export interface WxSocketApi {
    connectSocket(options: SocketOptions): SocketTask;
}
/** The part of Taro the transport uses: its `connectSocket` answers a promise of the task. */
export interface TaroSocketApi {
    connectSocket(options: SocketOptions): Promise<SocketTask>;
}
/** A WeChat mini-program's socket task (`wx.connectSocket`). Pass `wx`; it defaults to the global one. */
export declare function wxTransport(wxApi?: WxSocketApi): TransportFactory;
/** A uni-app socket task (`uni.connectSocket`). Pass `uni`; it defaults to the global one. */
export declare function uniTransport(uniApi?: WxSocketApi): TransportFactory;
/** A Taro socket task (`Taro.connectSocket`, which answers a promise). Pass the `Taro` object. */
export declare function taroTransport(taroApi: TaroSocketApi): TransportFactory;
/** The browser transport where there is a global `WebSocket`, else the WeChat one. */
export declare function defaultTransport(): TransportFactory;
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
    setStorage(options: {
        key: string;
        data: string;
    }): void;
}
/**
 * A mini-program's storage (`wx`, `uni` or `Taro`): the device id with
 * `setStorageSync`, everything written often with `setStorage`, which
 * does not block the app.
 */
export declare function miniProgramStorage(api: MiniProgramStorageApi): ClientStorage;
/** `localStorage` where there is one, a mini-program's storage where there is `wx`, else none. */
export declare function defaultStorage(): ClientStorage | undefined;
/**
 * The app lifecycle of a mini-program, as `wx`, `uni` and `Taro` report
 * it: shown (foreground), hidden (background), network changes.
 */
export interface AppLifecycle {
    onAppShow(callback: () => void): void;
    onAppHide(callback: () => void): void;
    onNetworkStatusChange?(callback: (result: {
        isConnected: boolean;
    }) => void): void;
    offAppShow?(callback: () => void): void;
    offAppHide?(callback: () => void): void;
    offNetworkStatusChange?(callback: (result: {
        isConnected: boolean;
    }) => void): void;
}
/** The global `wx` in a mini-program, else none. */
export declare function defaultLifecycle(): AppLifecycle | undefined;
